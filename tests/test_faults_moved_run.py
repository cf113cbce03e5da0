"""A run directory moved (or copied to another machine) resumes, tests, predicts, exports and loads where it
is now: everything in it names its own files relative to it (`transferkit.runtime.run_paths`,
`transferkit.runtime.checkpoint_state`); the data's new place is given on resume (`data.root=`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import transferkit
from conftest import write_class_folder
from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.runtime.checkpoint_state import RunCheckpoint
from transferkit.runtime.guards import RunInterrupted
from transferkit.runtime.run_paths import portable, read_located
from transferkit.training import builders
from transferkit.training.resume import check_same_splits

EXACT = ["augment=light", "finetune=full", "trainer.deterministic=true", "trainer.max_epochs=4"]


def files_naming(folder: Path, text: str) -> list[str]:
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*"))
            if p.is_file() and text.encode() in p.read_bytes()]


class SigtermAfterEpoch2(builders.pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: last.ckpt, then stop


@pytest.mark.slow
def test_a_run_moved_mid_way_with_its_data_resumes_to_the_uninterrupted_run(tmp_path, fast, test_resnet_weights,
                                                                            monkeypatch):
    images = write_class_folder(tmp_path / "images")
    weights = Path(shutil.copy(test_resnet_weights, tmp_path / "weights.safetensors"))
    base = [*(o for o in fast[:-1] if not o.startswith("model.weights=")), f"model.weights={weights}", *EXACT]
    full = cli.run(["fit", f"data.root={images}", *base, f"run_dir={tmp_path / 'full'}"])
    guards = builders.run_guard_callbacks
    monkeypatch.setattr(builders, "run_guard_callbacks", lambda d: [*guards(d), SigtermAfterEpoch2()])
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(RunInterrupted):
        cli.run(["fit", f"data.root={images}", *base, f"run_dir={a}"])
    monkeypatch.setattr(builders, "run_guard_callbacks", guards)
    shutil.move(a, b)
    moved_images = Path(shutil.move(images, tmp_path / "elsewhere" / "images"))
    moved_weights = Path(shutil.move(weights, tmp_path / "elsewhere" / "weights.safetensors"))

    with pytest.raises(FileNotFoundError, match=f"fit resume={b} data.root=<new place>"):
        cli.run(["fit", f"resume={b}"])
    with pytest.raises(FileNotFoundError, match=f"fit resume={b} model.weights=<its new place>"):
        cli.run(["fit", f"resume={b}", f"data.root={moved_images}"])
    resumed = cli.run(["fit", f"resume={b}", f"data.root={moved_images}", f"model.weights={moved_weights}"])
    assert resumed["run_dir"] == str(b) and resumed["status"] == "completed" and resumed["epochs"] == 4
    assert resumed["metrics"] == full["metrics"]
    last = torch.load(b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    same = torch.load(Path(full["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.equal(last[k], same["state_dict"][k]) for k in last)
    assert resumed["best_checkpoint"] == str(b / "checkpoints" / "best.ckpt")

    cli.run(["predict", f"ckpt_path={b}", f"input={moved_images / 'cat'}", f"run_dir={b / 'predicted'}"])
    rows = (b / "predicted" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 7 and all(",cat," in row for row in rows[1:])
    exported = cli.run(["export", f"ckpt_path={b / 'checkpoints' / 'best.ckpt'}", "format=torchscript",
                        f"run_dir={b / 'exported'}"])
    assert (b / "exported" / "model.torchscript.pt").is_file() and exported["parity"]
    run = transferkit.load(b)
    assert run.checkpoints() == [b / "checkpoints" / "best.ckpt"]
    assert run.predict(str(moved_images / "dog" / "0.png"))[0]["label"] == "dog"
    assert files_naming(b, str(a)) == []  # nothing in the moved run names where it was
    assert len(json.loads((b / "splits.json").read_text())["digests"]) == 12  # the files were checked by pixels too


def test_a_results_record_names_the_runs_own_files_relative_to_it(tmp_path):
    run = tmp_path / "run"
    record = {"run_dir": str(run), "best_checkpoint": str(run / "checkpoints" / "best.ckpt"),
              "weights": "/elsewhere/w.safetensors", "resumes": [{"checkpoint": str(run / "checkpoints" / "last.ckpt")}],
              "ensemble": {"members": [str(run / "folds" / "0" / "checkpoints" / "best.ckpt")]}}
    written = portable(record, run)
    assert written["run_dir"] == "." and written["best_checkpoint"] == "checkpoints/best.ckpt"
    assert written["weights"] == "/elsewhere/w.safetensors"  # outside the run: as given
    moved = tmp_path / "moved"
    assert read_located(written, moved)["ensemble"]["members"] == [str(moved / "folds/0/checkpoints/best.ckpt")]
    # An older record (absolute paths) follows its directory too.
    assert read_located(record, moved)["resumes"][0]["checkpoint"] == str(moved / "checkpoints" / "last.ckpt")


def test_the_checkpoint_callback_state_is_relative_and_an_old_absolute_one_is_rerooted(tmp_path):
    folder = tmp_path / "b" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "best.ckpt").write_bytes(b"x")
    callback = RunCheckpoint(dirpath=folder, filename="best", monitor="val/acc", mode="max")
    callback.best_model_path, callback.best_model_score = str(folder / "best.ckpt"), torch.tensor(0.5)
    callback.best_k_models = {str(folder / "best.ckpt"): torch.tensor(0.5)}
    state = callback.state_dict()
    assert state["dirpath"] == "." and state["best_model_path"] == "best.ckpt" and list(state["best_k_models"]) == [
        "best.ckpt"]
    assert callback.state_key.startswith("ModelCheckpoint{")  # older checkpoints' key: their state restores
    old = {**state, "dirpath": str(tmp_path / "a" / "checkpoints"), "best_model_path": str(tmp_path / "a/checkpoints/best.ckpt"),
           "best_k_models": {str(tmp_path / "a/checkpoints/best.ckpt"): torch.tensor(0.5)}}
    fresh = RunCheckpoint(dirpath=folder, filename="best", monitor="val/acc", mode="max")
    fresh.load_state_dict(old)
    assert fresh.best_model_path == str(folder / "best.ckpt") and float(fresh.best_model_score) == 0.5
    elsewhere = RunCheckpoint(dirpath=tmp_path / "c", filename="best", monitor="val/acc", mode="max")
    elsewhere.load_state_dict(state)  # fit ckpt_path=<another run's>: its best is not here, this run starts afresh
    assert elsewhere.best_model_path == "" and elsewhere.best_model_score is None


def test_splits_of_other_files_at_the_new_root_name_the_first_difference(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = {"root": "/old/images", "classes": ["cat", "dog"],
             "splits": {"train": [["cat/0.png", 0], ["dog/0.png", 1]]}, "skipped": [{"path": "/old/images/cat/x.png"}]}
    (run / "splits.json").write_text(json.dumps(saved))
    moved = {**saved, "root": "/new/images", "skipped": [{"path": "/new/images/cat/x.png"}]}
    check_same_splits(moved, run, "/new/images")  # the same files at another place
    other = {**moved, "splits": {"train": [["cat/0.png", 0], ["dog/9.png", 1]]}}
    with pytest.raises(ConfigError, match=r"splits.train\[1\]\[0\] was 'dog/0.png', data.root='/new/images' gives "
                                          r"'dog/9.png'.*Point data.root= at the folder the run trained on"):
        check_same_splits(other, run, "/new/images")


def test_data_root_and_weights_on_resume_are_refused_where_nothing_could_move(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: {root: null, embedded: digits}\nfinetune: {strategy: freeze}\n"
                                     "model: {weights: charnet}\n")
    (run / "results.json").write_text(json.dumps({"command": "fit", "status": "interrupted"}))
    with pytest.raises(ConfigError, match="data.root cannot be given when resuming .* embedded data set 'digits'"):
        cli.run(["fit", f"resume={run}", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="model.weights cannot change when resuming .* weights are 'charnet'"):
        cli.run(["fit", f"resume={run}", f"model.weights={tmp_path / 'w.safetensors'}"])


def test_a_file_with_other_pixels_at_the_new_root_is_named(tmp_path):
    from PIL import Image

    from transferkit.data.folders import scan_image_folder

    images = write_class_folder(tmp_path / "images")
    run = tmp_path / "run"
    run.mkdir()
    (run / "splits.json").write_text(json.dumps(scan_image_folder(images).to_json()))
    moved = Path(shutil.move(images, tmp_path / "moved"))
    check_same_splits(scan_image_folder(moved).to_json(), run, str(moved))  # the same files, moved
    Image.new("RGB", (32, 32), (1, 2, 3)).save(moved / "dog" / "3.png")  # same name, other pixels
    with pytest.raises(ConfigError, match=r"its digests.dog/3.png was '[0-9a-f]+', data.root=.* gives '[0-9a-f]+'"):
        check_same_splits(scan_image_folder(moved).to_json(), run, str(moved))
