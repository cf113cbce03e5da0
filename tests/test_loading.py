"""Reading a checkpoint never runs code from it: predict, test, fit resume and model.weights refuse such
files in one line, and files that are not checkpoints at all are named with what is wrong."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from transferkit.cli import app as cli
from transferkit.tasks.loading import load_task, read_checkpoint
from transferkit.runtime.torch_files import CheckpointError, UnsafeCheckpointError, read_torch_file


class WritesMarker:
    """Unpickling it calls ``open(marker, "w")``: the file appears only if the pickle was run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class RunsShell(WritesMarker):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def looks_like_a_checkpoint(payload: object) -> dict:
    return {"state_dict": {"head.weight": torch.zeros(2, 4)}, "transferkit_task": "ClassificationTask",
            "hyper_parameters": {"num_classes": 2, "class_names": ["cat", "dog"]}, "payload": payload}


@pytest.fixture(params=[WritesMarker, RunsShell, "legacy"])
def malicious(request, tmp_path: Path) -> tuple[Path, Path]:
    """(a checkpoint whose unpickling would create ``marker``, the marker's path)."""
    marker, path = tmp_path / "marker", tmp_path / "old_run" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    if request.param == "legacy":  # a bare pickle, as torch.save wrote before the zip format
        path.write_bytes(pickle.dumps(looks_like_a_checkpoint(RunsShell(marker)), protocol=2))
    else:
        torch.save(looks_like_a_checkpoint(request.param(marker)), path)
    return path, marker


def assert_refused(error: Exception, path: Path) -> None:
    text = str(error)
    assert "\n" not in text and repr(str(path)) in text and "was not loaded" in text and "run code" in text


def test_predict_refuses_a_checkpoint_that_would_run_code(malicious, image_folder: Path, tmp_path: Path) -> None:
    path, marker = malicious
    with pytest.raises(UnsafeCheckpointError) as info:
        cli.run(["predict", f"ckpt_path={path}", f"input={image_folder}", f"run_dir={tmp_path / 'p'}"])
    assert_refused(info.value, path)
    assert not marker.exists()
    assert not (tmp_path / "p").exists()  # refused before a run directory was made


def test_test_refuses_a_checkpoint_that_would_run_code(malicious, tmp_path: Path) -> None:
    path, marker = malicious
    with pytest.raises(UnsafeCheckpointError) as info:
        cli.run(["test", f"ckpt_path={path}", f"run_dir={tmp_path / 't'}"])
    assert_refused(info.value, path)
    assert not marker.exists()


def test_fit_refuses_to_resume_from_a_checkpoint_that_would_run_code(malicious, image_folder: Path,
                                                                     fast: list[str]) -> None:
    path, marker = malicious
    with pytest.raises(UnsafeCheckpointError) as info:
        cli.run(["fit", f"data.root={image_folder}", *fast, f"ckpt_path={path}"])
    assert_refused(info.value, path)
    assert not marker.exists()


def test_fit_resume_refuses_a_last_checkpoint_that_would_run_code(malicious, image_folder: Path) -> None:
    from omegaconf import OmegaConf

    path, marker = malicious
    run = path.parent.parent
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cli.compose_config([f"data.root={image_folder}"])))
    path.rename(path.with_name("last.ckpt"))
    with pytest.raises(ValueError) as info:  # UnsafeCheckpointError, or not a zip checkpoint at all (legacy)
        cli.run(["fit", f"resume={run}"])
    assert "\n" not in str(info.value) and "last.ckpt" in str(info.value)
    assert not marker.exists()


def test_model_weights_refuse_a_file_that_would_run_code(malicious, tmp_path: Path) -> None:
    from transferkit.models.weight_loading import read_state_dict
    from transferkit.models.weights import file_record

    path, marker = malicious
    pth = path.with_suffix(".pth")
    pth.write_bytes(path.read_bytes())
    for read in (lambda: file_record(path), lambda: read_state_dict(pth)):
        with pytest.raises(UnsafeCheckpointError, match=r"^model\.weights=") as info:
            read()
        assert "\n" not in str(info.value)
    assert not marker.exists()


def test_the_command_line_says_it_in_one_line(malicious, image_folder: Path, tmp_path: Path, capsys) -> None:
    path, marker = malicious
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", f"ckpt_path={path}", f"input={image_folder}", f"run_dir={tmp_path / 'p'}"])
    assert exit_info.value.code == 1
    first, *rest = capsys.readouterr().err.splitlines()
    assert first.startswith("transferkit: error: UnsafeCheckpointError: ckpt_path=") and "would run code" in first
    assert rest == ["(add debug=true for the full traceback)"] and not marker.exists()


def broken_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what its error must say)."""
    whole = folder / "whole.ckpt"
    torch.save(looks_like_a_checkpoint(None) | {"big": torch.zeros(4096)}, whole)
    files = {"empty": (b"", r"is empty \(0 bytes\)"),
             "truncated": (whole.read_bytes()[: whole.stat().st_size // 2], "is truncated or corrupt"),
             "text": (b"epoch: 3\nloss: 0.1\n", r"is not a PyTorch checkpoint \(it starts with b'epoch"),
             "list": (None, "holds list, not a Lightning checkpoint")}
    found = {}
    for name, (data, message) in files.items():
        path = folder / f"{name}.ckpt"
        path.write_bytes(data) if data is not None else torch.save([1, 2], path)
        found[name] = (path, message)
    return found


@pytest.mark.parametrize("name", ["empty", "truncated", "text", "list"])
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(name: str, tmp_path: Path, image_folder: Path) -> None:
    path, message = broken_files(tmp_path)[name]
    for argv in (["predict", f"ckpt_path={path}", f"input={image_folder}"], ["test", f"ckpt_path={path}"]):
        with pytest.raises(ValueError, match=message) as info:
            cli.run([*argv, f"run_dir={tmp_path / argv[0]}"])
        assert "\n" not in str(info.value) and f"ckpt_path={str(path)!r}" in str(info.value)


def test_a_folder_and_a_foreign_checkpoint_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        read_torch_file(tmp_path)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "epoch": 1}, path)
    assert read_checkpoint(path)["epoch"] == 1
    with pytest.raises(ValueError, match=r"is not a transferkit checkpoint \(task None\)"):
        load_task(path)
