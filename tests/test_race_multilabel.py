"""`finetune=auto` on a multi-label run (issue 26): legs scored on val/map (macro AP) with the paired bootstrap
over validation images, the recorder's per-class scores, the ensemble's own thresholds, and a stopped race."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_multilabel import CLASSES, write_multilabel_set
from transferkit.cli import app as cli
from transferkit.runtime.guards import RunInterrupted
from transferkit.training import builders
from transferkit.training.race import ensemble as race_ensemble
from transferkit.training.race.rules import (BOOTSTRAP_DRAWS, average_precision, bootstrap_indices, choose_survivors,
                                             mean_average_precision, resample_counts, score_outputs)
from transferkit.training.race.validation import ValidationRecorder


def scores_with_ties(seed: int = 0, n: int = 60, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities rounded to 1 decimal (many ties) and multi-hot targets; the last class has no positive."""
    rng = np.random.default_rng(seed)
    hot = (rng.random((n, classes)) < 0.35).astype(np.int64)
    hot[:, -1] = 0
    probs = np.clip(0.5 * hot + rng.random((n, classes)) * 0.6, 0, 1).round(1)
    return probs, hot


# -- the metric and its bootstrap ---------------------------------------------------------------------
def test_macro_ap_is_val_maps_definition_and_a_resample_is_its_duplicated_rows() -> None:
    from sklearn.metrics import average_precision_score
    from torchmetrics.classification import MultilabelAveragePrecision

    probs, hot = scores_with_ties()
    ones = np.ones((1, len(hot)))
    ours = mean_average_precision(probs, hot, ones)[0]
    metric = MultilabelAveragePrecision(hot.shape[1], average="macro", thresholds=None)
    with pytest.warns(UserWarning, match="No positive samples"):  # the class without positives scores 0
        expected = float(metric(torch.tensor(probs, dtype=torch.float32), torch.tensor(hot)))
    assert ours == pytest.approx(expected, abs=1e-6)
    for c in range(hot.shape[1] - 1):  # where a class has positives, scikit-learn's AP (ties included)
        assert average_precision(probs[:, c], hot[:, c], ones)[0] == pytest.approx(
            average_precision_score(hot[:, c], probs[:, c]), abs=1e-12)
    # a bootstrap resample counted by multiplicity is the AP of the resampled (duplicated) rows
    index = bootstrap_indices(len(hot), draws=5)
    counts = resample_counts(len(hot), draws=5)
    assert counts.sum(axis=1).tolist() == [len(hot)] * 5
    for row in range(5):
        picked = index[row]
        assert average_precision(probs[:, 0], hot[:, 0], counts[row:row + 1])[0] == pytest.approx(
            average_precision_score(hot[picked, 0], probs[picked, 0]), abs=1e-12)


def multilabel_record(probs: np.ndarray, hot: np.ndarray) -> dict:
    return {"prob": probs.tolist(), "target": hot.tolist()}


def test_the_paired_bootstrap_of_map_puts_a_clearly_worse_candidate_behind() -> None:
    rng = np.random.default_rng(1)
    hot = (rng.random((80, 3)) < 0.4).astype(np.int64)
    good = np.clip(0.7 * hot + 0.3 * rng.random(hot.shape), 0, 1)  # every positive above every negative
    poor = rng.random(hot.shape)  # ranks at random
    scores = {"full-llrd": score_outputs([multilabel_record(good, hot)] * 2, "val/map"),
              "scratch": score_outputs([multilabel_record(poor, hot)] * 2, "val/map")}
    assert scores["full-llrd"].value == pytest.approx(1.0) and scores["scratch"].value < 0.7
    assert len(scores["scratch"].replicates) == BOOTSTRAP_DRAWS and scores["scratch"].se > 0
    verdicts = {v.name: v for v in choose_survivors(scores, keep=1)}
    behind = verdicts["scratch"]
    assert behind.behind > 0 and behind.behind > 2 * behind.se_behind > 0  # clearly behind: not a member
    assert not race_ensemble.is_member("scratch", "full-llrd", behind.to_dict())
    same = {"full-llrd": scores["full-llrd"], "lpft-full": score_outputs([multilabel_record(good, hot)] * 2, "val/map")}
    tie = {v.name: v for v in choose_survivors(same, keep=1)}["lpft-full"]
    assert tie.behind == 0 and tie.se_behind == 0  # identical candidates: nothing between them
    assert race_ensemble.is_member("lpft-full", "full-llrd", tie.to_dict())
    with pytest.raises(ValueError, match=r"multi-label run on \['val/map'\], not 'val/f1'"):
        score_outputs([multilabel_record(good, hot)], "val/f1")


def test_the_recorders_state_keeps_multilabel_scores_and_leaves_single_label_as_it_was() -> None:
    recorder = ValidationRecorder()
    assert set(recorder.state_dict()) == {"losses", "accs", "outputs"}  # single-label: the keys as before
    recorder.losses, recorder.accs, recorder.maps = [0.5], [math.nan], [0.75]
    recorder.outputs = [{"prob": [[0.123456789, 0.9]], "target": [[0, 1]]}]
    restored = ValidationRecorder()
    restored.load_state_dict(recorder.state_dict())
    assert restored.maps == [0.75] and restored.outputs == recorder.outputs


def test_a_manifest_without_data_root_is_read_from_its_folder(tmp_path: Path) -> None:
    from transferkit.planning.plan import manifest_root

    manifest = tmp_path / "set" / "labels.csv"
    assert manifest_root({"manifest": str(manifest), "root": None})["root"] == str(manifest.parent)
    assert manifest_root({"manifest": str(manifest), "root": "/elsewhere"})["root"] == "/elsewhere"
    assert manifest_root({"manifest": None, "root": None})["root"] is None  # the embedded data set


# -- a race on a tiny manifest, end to end --------------------------------------------------------------
def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_an_auto_multilabel_fit_races_on_val_map_and_its_ensemble_has_its_own_thresholds(
        tmp_path: Path, fast, caplog, monkeypatch) -> None:
    from sklearn.metrics import average_precision_score

    caplog.set_level("INFO", logger="transferkit")
    monkeypatch.setattr(race_ensemble, "WITHIN_SE", math.inf)  # on 12 val images: every finisher joins
    manifest = write_multilabel_set(tmp_path / "ml")
    common = [*fast[:-1], f"data.manifest={manifest}", "finetune=auto", "trainer.max_epochs=2"]  # root: its folder
    run = tmp_path / "auto"
    results = cli.run(["fit", *common, f"run_dir={run}"])
    auto = results["auto"]
    assert results["task"] == "multilabel" and auto["metric"] == "val/map"
    assert [c["name"] for c in auto["candidates"]] == ["freeze", "full-llrd", "scratch"]  # not measured
    for entry in auto["candidates"]:
        rung = entry["rungs"][-1]
        assert "val_map" in rung and "val_acc" not in rung and 0 <= rung["score"] <= 1
    assert "race (val/map ± bootstrap SE" in caplog.text and "val/acc" not in caplog.text.split("race (")[1][:20]
    assert auto["ensemble"] == ["freeze", "full-llrd", "scratch"] and "winner_metrics" in auto
    metrics = results["metrics"]
    assert {"test/map", "test/f1_macro", "test/f1_micro", "test/f1_macro_at_0.5", "test/ap_red"} <= set(metrics)
    assert "test/f1" not in metrics and "test/f1" not in auto["winner_metrics"]  # reported once
    # the ensemble's thresholds: tuned on its own validation probabilities, in ensemble.json, used by predict
    record = json.loads((run / "checkpoints" / "ensemble.json").read_text())
    thresholds = dict(zip(CLASSES, record["thresholds"]))
    assert results["thresholds"]["tuned_for"] == "ensemble"
    assert results["thresholds"]["thresholds"] == pytest.approx(thresholds, abs=1e-6)
    assert auto["winner_thresholds"]["thresholds"] != results["thresholds"]["thresholds"]
    from transferkit.tasks.loading import load_ensemble

    ensemble, _ = load_ensemble(str(run))  # what predict, serve and Run.predict load for ckpt_path=<run dir>
    assert ensemble.thresholds == pytest.approx(record["thresholds"])
    members = np.mean([m.thresholds or [0.5] * len(CLASSES) for m in ensemble.members], axis=0)
    assert not np.allclose(members, record["thresholds"])  # not the members' own, averaged
    out = cli.run(["predict", f"ckpt_path={run}", f"input={manifest.parent / 'img'}",
                   f"run_dir={tmp_path / 'predict'}"])
    rows = {Path(r["path"]).name: r for r in read_csv(Path(out["output"]))}
    truth = {Path(r["path"]).name: r["labels"].split(";") for r in read_csv(manifest) if r["split"] == "test"}
    names = sorted(truth)
    hot = np.array([[c in truth[n] for c in CLASSES] for n in names])
    probs = np.array([[float(rows[n][f"p_{c}"]) for c in CLASSES] for n in names])
    assert round(average_precision_score(hot, probs, average="macro"), 4) == round(metrics["test/map"], 4)
    for row in rows.values():
        assert row["labels"] == ";".join(c for c in CLASSES if float(row[f"p_{c}"]) >= thresholds[c])
    tested = cli.run(["test", f"ckpt_path={run}", f"data.root={manifest.parent}", f"data.manifest={manifest}",
                      *fast[:-1], f"run_dir={tmp_path / 'test'}"])
    assert tested["metrics"]["test/map"] == pytest.approx(metrics["test/map"], abs=1e-6)
    best = cli.run(["fit", *common, "finetune.combine=best", f"run_dir={tmp_path / 'best'}"])
    assert "ensemble" not in best["auto"] and not (tmp_path / "best" / "checkpoints" / "ensemble.json").exists()
    assert best["metrics"]["test/map"] == pytest.approx(auto["winner_metrics"]["test/map"], abs=1e-6)


class SigtermInTheThirdEpoch(builders.pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def recorder_state(path: Path) -> dict:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return next(v for k, v in checkpoint["callbacks"].items() if "ValidationRecorder" in k)


@pytest.mark.slow
def test_a_stopped_multilabel_race_resumes_with_the_scores_it_had(tmp_path: Path, fast, monkeypatch) -> None:
    """Stopped in full-llrd's third (last) epoch: its second validation, one of the two it is scored on, was
    recorded before the stop; the resumed leg scores it from its checkpoint, the same floats."""
    guards = builders.run_guard_callbacks
    monkeypatch.setattr(builders, "run_guard_callbacks", lambda d: [*guards(d), SigtermInTheThirdEpoch()])
    manifest = write_multilabel_set(tmp_path / "ml")
    run = tmp_path / "auto"
    with pytest.raises(RunInterrupted):
        cli.run(["fit", *fast[:-1], f"data.root={manifest.parent}", f"data.manifest={manifest}", "finetune=auto",
                 "trainer.max_epochs=3", f"run_dir={run}"])
    before = recorder_state(run / "race" / "full-llrd" / "checkpoints" / "last.ckpt")
    assert len(before["maps"]) == 2 and len(before["outputs"][-1]["prob"][0]) == len(CLASSES)
    monkeypatch.setattr(builders, "run_guard_callbacks", guards)
    resumed = cli.run(["fit", f"resume={run}"])
    assert resumed["status"] == "completed"
    progress = json.loads((run / "race" / "progress.json").read_text())
    rung = next(e for e in progress["entries"] if e["name"] == "full-llrd")["rungs"][-1]
    assert rung["outputs"][0] == before["outputs"][-1] and rung["maps"][0] == before["maps"][-1]
    assert rung["score"] == pytest.approx(score_outputs(rung["outputs"], "val/map").value, abs=1e-4)
