"""A user's folder with broken files: a few are skipped and reported, many stop the run before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_class_folder
from transferkit.cli import app as cli
pytestmark = pytest.mark.slow


def corrupt(paths: list[Path]) -> None:
    for path in paths:
        path.write_bytes(path.read_bytes()[:40])  # a truncated PNG


def test_three_percent_corrupt_trains_and_reports(tmp_path, fast):
    root = write_class_folder(tmp_path / "imgs", per_class=17)
    bad = sorted(root.glob("cat/*.png"))[:1]
    corrupt(bad)
    results = cli.run(["fit", f"data.root={root}", *fast])
    skipped = json.loads((Path(results["run_dir"]) / "results.json").read_text())["data"]["skipped_files"]
    assert [Path(p).name for p, _ in skipped] == [bad[0].name]
    assert results["data"]["train_size"] + results["data"]["val_size"] + results["data"]["test_size"] == 33


def test_half_corrupt_stops_before_training_with_the_list(tmp_path, fast, capsys):
    root = write_class_folder(tmp_path / "imgs", per_class=6)
    bad = sorted(root.glob("*/*.png"))[::2]
    corrupt(bad)
    with pytest.raises(SystemExit) as info:
        cli.main(["fit", f"data.root={root}", *fast])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert all(p.name in err for p in bad)
    assert not (tmp_path / "run").exists()  # stopped before a run directory was made
