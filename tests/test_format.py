"""The format version of checkpoints and run directories, and the one migration that reads older ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transferkit.errors import ConfigError
from transferkit.planning.spec import RunSpec
from transferkit.runtime.format import (FORMAT_KEY, FORMAT_VERSION, SPEC_KEY, format_version, migrate_checkpoint,
                                        migrate_results)
from transferkit.tasks.loading import load_task

OLD_RUN = Path(__file__).resolve().parent / "fixtures" / "old_run" / "run"


def test_a_checkpoint_without_a_version_is_format_1_and_migrates() -> None:
    old = torch.load(OLD_RUN / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    assert FORMAT_KEY not in old and format_version(old) == 1
    migrated = migrate_checkpoint(dict(old))
    assert migrated[FORMAT_KEY] == FORMAT_VERSION and migrated[SPEC_KEY] is None
    assert migrated["hyper_parameters"] == old["hyper_parameters"]  # hyperparameters unchanged
    task = load_task(OLD_RUN / "checkpoints" / "best.ckpt")  # through the task's on_load_checkpoint
    assert list(task.class_names) == ["blue", "green", "red"]


def test_a_newer_format_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match=rf"format {FORMAT_VERSION + 1}; this one reads up to {FORMAT_VERSION}"):
        migrate_checkpoint({FORMAT_KEY: FORMAT_VERSION + 1})
    with pytest.raises(ConfigError, match="upgrade transferkit"):
        migrate_results({"format_version": FORMAT_VERSION + 1})
    assert migrate_results({})["format_read"] == 1


@pytest.mark.slow
def test_a_new_run_names_its_format_in_checkpoints_results_and_spec(tmp_path: Path, fast) -> None:
    from transferkit.cli.app import run

    results = run(["fit", "recipe=small_similar", "data.train_per_class=3", *fast, f"run_dir={tmp_path / 'run'}"])
    run_dir = Path(results["run_dir"])
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint[FORMAT_KEY] == FORMAT_VERSION == results["format_version"]
    spec = RunSpec.from_dict(json.loads((run_dir / "spec.json").read_text()))
    assert RunSpec.from_dict(checkpoint[SPEC_KEY]) == spec  # plain values: weights-only loading reads them
    assert spec.format_version == FORMAT_VERSION and spec.model.backbone == results["backbone"]
