"""`fit resume=...`: a resumed run continues exactly, in place; what cannot resume says so in one line."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest
import torch
import yaml

from conftest import write_class_folder
from transferkit.training import builders
from transferkit.cli import app as cli
from transferkit.training import metrics_files
from transferkit.planning import resume as resuming
from transferkit.errors import ConfigError
from transferkit.runtime.guards import RunInterrupted
from tests.test_faults_writers import start_holder

pytestmark = pytest.mark.slow

# RNG matters here: random augmentation, shuffling, a fully trained backbone.
EXACT = ["augment=light", "finetune=full", "trainer.deterministic=true"]


def overrides(images: Path, weights: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.root={images}", "model.backbone=test_resnet", f"model.weights={weights}", "model.in_chans=3",
            "data.image_size=32", "data.batch_size=4", "data.num_workers=0", "trainer.accelerator=cpu",
            "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            f"run_dir={run_dir}", *extra]


def weights_of(run_dir: str) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def metric_rows(run_dir: str) -> list[dict]:
    with (Path(run_dir) / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_run(one: dict, other: dict) -> None:
    a, b = weights_of(one["run_dir"]), weights_of(other["run_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert one["metrics"] == other["metrics"]
    assert metric_rows(one["run_dir"]) == metric_rows(other["run_dir"])  # appended, nothing twice


def test_run_stopped_after_two_epochs_and_extended_to_four_matches_a_four_epoch_run(image_folder, fast, tmp_path):
    # A constant LR: extending max_epochs re-spans a decaying schedule (see docs/guides/faults-resume.md).
    base = [f"data.root={image_folder}", *fast[:-1], *EXACT, "scheduler=constant"]
    four = cli.run(["fit", *base, "trainer.max_epochs=4", f"run_dir={tmp_path / 'four'}"])
    two = cli.run(["fit", *base, "trainer.max_epochs=2", f"run_dir={tmp_path / 'two'}"])
    resumed = cli.run(["fit", f"resume={two['run_dir']}", "trainer.max_epochs=4"])
    assert resumed["run_dir"] == two["run_dir"] and resumed["epochs"] == 4
    assert_same_run(four, resumed)
    saved = json.loads((Path(two["run_dir"]) / "results.json").read_text())
    assert saved["status"] == "completed" and saved["resumes"][0]["epochs_done"] == 2
    assert saved["wall_seconds"] > two["wall_seconds"]
    assert yaml.safe_load((Path(two["run_dir"]) / "config.yaml").read_text())["trainer"]["max_epochs"] == 4
    assert not (Path(two["run_dir"]) / "metrics.previous.csv").exists()


def test_sigterm_at_an_epoch_end_saves_last_and_resume_continues_exactly(image_folder, fast, tmp_path, monkeypatch):
    base = [f"data.root={image_folder}", *fast[:-1], *EXACT, "trainer.max_epochs=4"]
    full = cli.run(["fit", *base, f"run_dir={tmp_path / 'full'}"])

    class SigtermAfterEpoch2(builders.pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: stop at the next boundary

    guards = builders.run_guard_callbacks
    monkeypatch.setattr(builders, "run_guard_callbacks", lambda d: [*guards(d), SigtermAfterEpoch2()])
    with pytest.raises(RunInterrupted) as stopped:
        cli.run(["fit", *base, f"run_dir={tmp_path / 'cut'}"])
    run_dir = tmp_path / "cut"
    assert stopped.value.exit_code == 143 and f"fit resume={run_dir.resolve()}" in str(stopped.value)
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM" and record["epochs_done"] == 2
    monkeypatch.setattr(builders, "run_guard_callbacks", guards)
    resumed = cli.run(["fit", f"resume={run_dir}"])
    assert_same_run(full, resumed)
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"


# -- what cannot resume ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, test_resnet_weights) -> Path:
    root = tmp_path_factory.mktemp("finished")
    images = write_class_folder(root / "images")
    results = cli.run(["fit", *overrides(images, test_resnet_weights, root / "run", "trainer.max_epochs=1")])
    return Path(results["run_dir"])


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "outputs" / "2024-01-02" / "09-00-00"))


def test_missing_empty_or_checkpointless_runs_are_refused(finished_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        cli.run(["fit", f"resume={tmp_path / 'nowhere'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.yaml"):
        cli.run(["fit", f"resume={tmp_path / 'empty'}"])
    run = copy_run(finished_run, tmp_path)
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.ckpt"):
        cli.run(["fit", f"resume={run}"])


def test_an_empty_last_checkpoint_names_the_previous_good_one(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit) as exited:
        cli.main(["fit", f"resume={run}"])
    assert exited.value.code == 1
    line = capsys.readouterr().err.splitlines()[0]
    assert f"{run / 'checkpoints' / 'last.ckpt'} is empty (0 bytes)" in line
    assert f"previous good checkpoint is {run / 'checkpoints' / 'best.ckpt'}" in line


def test_overrides_that_change_training_and_ckpt_path_last_are_refused(finished_run, tmp_path, image_folder):
    run = copy_run(finished_run, tmp_path)
    with pytest.raises(ConfigError, match="optimizer.lr cannot change when resuming"):
        cli.run(["fit", f"resume={run}", "optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="resume=last"):
        cli.run(["fit", f"data.root={image_folder}", "ckpt_path=last", f"run_dir={tmp_path / 'new'}"])
    with pytest.raises(cli.UsageError, match="continues a fit run"):
        cli.run(["test", f"resume={run}"])


def test_resume_last_finds_the_newest_fit_run_under_outputs(finished_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no fit run under"):
        resuming.find_run("last")
    older = copy_run(finished_run, tmp_path)
    newer = Path(shutil.copytree(older, older.with_name("09-00-00-1")))
    not_fit = Path(shutil.copytree(older, older.parent.parent / "2024-01-03" / "08-00-00"))
    (not_fit / "results.json").write_text(json.dumps({"command": "predict"}))
    assert resuming.find_run("last") == newer.resolve()


def test_a_run_killed_after_its_last_epoch_resumes_to_the_same_results(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    finished = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({"command": "fit", "status": "running"}))  # kill -9 while testing
    resumed = cli.run(["fit", f"resume={run}"])
    assert resumed["status"] == "completed" and resumed["epochs"] == finished["epochs"]
    assert resumed["metrics"] == finished["metrics"]  # val/* measured again: this session trained nothing


def test_a_race_stopped_before_it_began_is_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["finetune"]["strategy"] = "auto"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "results.json").write_text(json.dumps({"command": "fit", "status": "interrupted"}))
    with pytest.raises(FileNotFoundError, match="stopped before its race began"):
        cli.run(["fit", f"resume={run}"])


class SigtermInTheFinishersSecondEpoch(builders.pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def race_stopped_in_the_finishers_second_epoch(monkeypatch, winner: str):
    """The field freeze, full-llrd, scratch (one leg each, in that order, so the signal stops full-llrd
    in its second epoch), `winner` made to win; returns the real guard callbacks, to restore for the resume."""
    from transferkit.training.race import legs as racing
    from transferkit.planning import race as race_plan
    from transferkit.training.race.rules import Verdict
    monkeypatch.setattr(race_plan, "scratch_enters", lambda advice: (True, "test"))
    monkeypatch.setattr(racing, "choose_survivors", lambda scores, keep: [
        Verdict(n, i < keep, 0.0, 0.0, 0.0, 0.0, "test") for i, n in enumerate(sorted(scores, key=winner.__ne__))])
    guards = builders.run_guard_callbacks
    monkeypatch.setattr(builders, "run_guard_callbacks", lambda d: [*guards(d), SigtermInTheFinishersSecondEpoch()])
    return guards


def test_a_race_stopped_mid_way_resumes_keeping_its_record_and_winner(image_folder, fast, tmp_path, monkeypatch):
    # On 12 random images any plan may win; make full-llrd win.
    guards = race_stopped_in_the_finishers_second_epoch(monkeypatch, "full-llrd")
    run_dir = tmp_path / "auto"
    with pytest.raises(RunInterrupted, match=f"resume it with: python -m transferkit fit resume={run_dir}"):
        cli.run(["fit", f"data.root={image_folder}", *fast[:-1], "finetune=auto", "augment=none",
                 "trainer.max_epochs=3", f"run_dir={run_dir}"])
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    stopped = json.loads((run_dir / "race" / "progress.json").read_text())
    assert stopped["alive"] == ["freeze", "full-llrd", "scratch"]
    assert [len(e["rungs"]) for e in stopped["entries"]] == [1, 0, 0]  # freeze's leg ran, full-llrd's did not finish
    first_rungs = {e["name"]: {k: v for k, v in e["rungs"][0].items() if k != "outputs"}
                   for e in stopped["entries"] if e["rungs"]}

    monkeypatch.setattr(builders, "run_guard_callbacks", guards)
    resumed = cli.run(["fit", f"resume={run_dir}"])
    auto = resumed["auto"]
    assert resumed["status"] == "completed" and auto["winner"] == "full-llrd" and "race" in resumed["resumes"][0]
    freeze = next(c for c in auto["candidates"] if c["name"] == "freeze")["rungs"][0]
    assert {k: v for k, v in freeze.items() if k != "verdict"} == first_rungs["freeze"]  # the record is kept
    assert [r["epochs"] for r in next(c for c in auto["candidates"] if c["name"] == "full-llrd")["rungs"]] == [3]
    last = torch.load(resumed["last_checkpoint"], map_location="cpu", weights_only=True)
    batches = -(-resumed["data"]["train_size"] // 4)
    assert last["global_step"] == 3 * batches  # the rest of epoch 2, then epoch 3: nothing trained twice
    steps = [row["step"] for row in metric_rows(str(run_dir / "race" / "full-llrd" / "logs" / "leg0"))
             if row.get("train/loss_step")]
    assert len(steps) == len(set(steps))  # the leg's rows appended, none twice


def test_a_race_resumed_after_its_winner_finished_completes(image_folder, fast, tmp_path, monkeypatch):
    """The winner (freeze) finished before the stop: the resumed session reattaches it, joins its
    metrics.csv and tests it on the same logger, which must learn the joined file's columns (it
    rewrote the file with only its own and failed on the earlier rows)."""
    guards = race_stopped_in_the_finishers_second_epoch(monkeypatch, "freeze")
    run_dir = tmp_path / "auto"
    with pytest.raises(RunInterrupted):
        cli.run(["fit", f"data.root={image_folder}", *fast[:-1], "finetune=auto", "augment=none",
                 "finetune.combine=best", "trainer.max_epochs=3", f"run_dir={run_dir}"])
    monkeypatch.setattr(builders, "run_guard_callbacks", guards)
    resumed = cli.run(["fit", f"resume={run_dir}"])
    assert resumed["status"] == "completed" and resumed["auto"]["winner"] == "freeze"
    assert "test/acc" in resumed["metrics"]
    rows = metric_rows(str(run_dir / "race" / "freeze" / "logs" / "leg0"))
    assert any(row.get("test/acc") for row in rows) and any(row.get("val/loss") for row in rows)


def test_a_finished_race_continues_its_winner(image_folder, fast, tmp_path, monkeypatch):
    from transferkit.training.race import ensemble as race_ensemble
    monkeypatch.setattr(race_ensemble, "WITHIN_SE", float("inf"))  # every finisher is a member
    # head_solver=sgd: a freeze winner then trains epochs too (an L-BFGS head is final after one).
    raced = cli.run(["fit", f"data.root={image_folder}", *fast[:-1], "finetune=auto", "augment=none",
                     "finetune.head_solver=sgd", "trainer.max_epochs=3", f"run_dir={tmp_path / 'auto'}"])
    resumed = cli.run(["fit", f"resume={raced['run_dir']}", "trainer.max_epochs=4"])
    trained_on = ("winner_metrics",)  # the ensemble's winner was trained on: its test metrics are new
    assert ({k: v for k, v in resumed["auto"].items() if k not in trained_on}
            == {k: v for k, v in raced["auto"].items() if k not in trained_on})
    assert resumed["strategy"] == raced["strategy"]
    # the run's ensemble takes the winner as it is now (its best.ckpt), the other members as they were
    assert resumed["ensemble"]["names"] == raced["ensemble"]["names"]
    winner_copy = Path(raced["run_dir"]) / "checkpoints" / "members" / f"{raced['auto']['winner']}.ckpt"
    assert torch.load(winner_copy, map_location="cpu", weights_only=True)["epoch"] == torch.load(
        resumed["best_checkpoint"], map_location="cpu", weights_only=True)["epoch"]
    assert resumed["epochs"] == 4 and Path(resumed["best_checkpoint"]).parent == Path(raced["run_dir"]) / "checkpoints"
    assert resumed["metrics"]["best/val/acc"] >= raced["metrics"]["best/val/acc"]  # best.ckpt only improves
    config = yaml.safe_load((Path(raced["run_dir"]) / "config.yaml").read_text())
    assert config["finetune"]["strategy"] == "auto" and config["trainer"]["max_epochs"] == 4
    epochs = {row["epoch"] for row in metric_rows(raced["run_dir"]) if row.get("val/loss")}
    assert epochs >= {"2", "3"}


def test_metrics_past_the_checkpoint_are_dropped_and_sessions_joined(tmp_path):
    def write(path: Path, steps: range) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["epoch", "step", "train/loss"])
            writer.writeheader()
            writer.writerows({"epoch": s // 4, "step": s, "train/loss": 1.0 / (s + 1)} for s in steps)

    write(tmp_path / "metrics.csv", range(10))  # steps 8 and 9 came after the checkpoint at step 8
    metrics_files.set_aside_metrics(tmp_path, global_step=8)
    assert not (tmp_path / "metrics.csv").exists()
    write(tmp_path / "metrics.csv", range(8, 12))  # the resumed session logs from step 8 again
    metrics_files.join_metrics(tmp_path)
    assert [int(r["step"]) for r in metric_rows(str(tmp_path))] == list(range(12))
    assert not (tmp_path / metrics_files.PREVIOUS_METRICS).exists()


def test_rows_longer_than_the_header_do_not_stop_the_join(tmp_path):
    """A kill while Lightning's CSV logger rewrote metrics.csv for new keys left a row longer than
    its header: the join keeps the named values (it once stopped with 'dict contains fields not in
    fieldnames')."""
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.5,0.9,0.7\n")
    metrics_files.set_aside_metrics(tmp_path, global_step=8)
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,2,0.4\n")
    metrics_files.join_metrics(tmp_path)
    assert [(r["step"], r["train/loss"]) for r in metric_rows(str(tmp_path))] == [("0", "1.0"), ("1", "0.5"),
                                                                              ("2", "0.4")]


def test_a_run_still_going_is_not_resumed_under_it(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    alive = start_holder(run)  # holds the run directory's lock, as a running fit does (tests/test_faults_writers.py)
    try:
        (run / "results.json").write_text(json.dumps({"command": "fit", "status": "running", "pid": alive.pid,
                                                      "host": socket.gethostname()}))
        with pytest.raises(ConfigError, match=f"still going \\(pid {alive.pid}\\b"):
            cli.run(["fit", f"resume={run}"])
    finally:
        alive.kill()
        alive.wait()
