"""Calibration (`calibration=temperature`): the temperature fit, ECE/NLL and their bootstrap intervals,
the optional checkpoint field (old checkpoints read as uncalibrated), and the one place predict,
ensembles and exported models apply it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.test_ensemble_tta import DATA, constant_task, save_checkpoint
from transferkit.data.inputs import InputSpec
from transferkit.errors import ConfigError
from transferkit.evaluation.calibration import (calibration_scores, expected_calibration_error, image_terms,
                                                reliability_bins, weighted_scores)
from transferkit.inference.exported import ExportedModelError
from transferkit.inference.predictor import exported_predictor, load_predictor, probabilities
from transferkit.inference.spec import CheckpointSpec
from transferkit.runtime.format import TEMPERATURE_KEY
from transferkit.tasks.calibration import apply_temperature, check_calibration, fit_temperature
from transferkit.tasks.loading import load_task
from transferkit.training.calibrate import store_temperature

OLD_RUN = Path(__file__).parent / "fixtures" / "old_run" / "run"


def overconfident(n: int, seed: int, temperature: float = 2.5, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels were drawn from softmax(logits / temperature): T fits `temperature`."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at():
    logits, labels = overconfident(4000, seed=0, temperature=2.5)
    fitted = fit_temperature(logits, labels)
    assert abs(fitted - 2.5) < 0.2
    nll = [F.cross_entropy(logits / t, labels).item() for t in (fitted * 0.9, fitted, fitted * 1.1)]
    assert nll[1] < nll[0] and nll[1] < nll[2]  # a minimum, not just a move in the right direction
    with pytest.raises(ValueError, match="N x C logits"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0))


def test_apply_temperature_divides_and_keeps_the_argmax():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert apply_temperature(logits, None) is logits and apply_temperature(logits, 1.0) is logits
    assert torch.equal(apply_temperature(logits, 2.0), logits / 2)
    np.testing.assert_allclose(apply_temperature(logits.numpy(), 4.0), logits.numpy() / 4)
    assert apply_temperature(logits, 3.0).argmax() == logits.argmax()
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            apply_temperature(logits, bad)


def test_calibration_key_checked_and_off_for_segmentation():
    assert check_calibration("temperature") == "temperature" and check_calibration(None) == "none"
    assert check_calibration("temperature", "segmentation") == "none"
    with pytest.raises(ConfigError, match="calibration='platt'"):
        check_calibration("platt")


def test_bootstrap_terms_reproduce_torchmetrics_and_intervals_hold_the_estimates():
    logits, labels = overconfident(600, seed=1)
    for temperature in (None, 2.0):
        probs = torch.softmax(apply_temperature(logits.double(), temperature), dim=1)
        ece, nll = weighted_scores(image_terms(logits, labels, temperature), np.ones((1, len(labels))))
        assert ece[0] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-5)
        assert nll[0] == pytest.approx(F.cross_entropy(torch.log(probs), labels).item(), abs=1e-6)
    metrics, ci = calibration_scores(logits, labels, fit_temperature(*overconfident(2000, seed=2)), draws=200)
    for key, value in metrics.items():
        assert ci[key][0] <= value <= ci[key][1], key
    assert metrics["test/ece"] < 0.5 * metrics["test/ece_uncalibrated"] and metrics["test/nll"] < metrics["test/nll_uncalibrated"]
    assert ci["test/ece_drop"][0] > 0 and ci["test/nll_drop"][0] > 0  # paired: the same resample for both
    assert calibration_scores(logits, labels, 2.0, draws=50)[1] == calibration_scores(logits, labels, 2.0, draws=50)[1]
    bins = reliability_bins(logits.numpy(), labels.numpy(), 2.0)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == len(labels)


def write_images(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"{i}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return paths


def scaled(probs: list[float], temperature: float) -> np.ndarray:
    return torch.softmax(torch.tensor(probs).log() / temperature, dim=0).numpy()


def test_a_checkpoints_temperature_reaches_predict_and_none_turns_it_off(tmp_path):
    paths = write_images(tmp_path / "in")
    one = save_checkpoint(constant_task([0.7, 0.2, 0.1]), tmp_path / "one.ckpt")
    two = save_checkpoint(constant_task([0.1, 0.6, 0.3]), tmp_path / "two.ckpt")
    assert load_task(one).temperature is None  # no field: uncalibrated, as before
    assert store_temperature([one, two, None, tmp_path / "missing.ckpt"], 2.0) == [str(one), str(two)]
    assert torch.load(one, weights_only=True)[TEMPERATURE_KEY] == 2.0 and load_task(one).temperature == 2.0
    for spec, expected in [
        (CheckpointSpec((str(one),), str(one)), scaled([0.7, 0.2, 0.1], 2.0)),
        (CheckpointSpec((str(one),), str(one), calibration="none"), np.array([0.7, 0.2, 0.1])),
        (CheckpointSpec((str(one), str(two)), [str(one), str(two)]),
         (scaled([0.7, 0.2, 0.1], 2.0) + scaled([0.1, 0.6, 0.3], 2.0)) / 2),
        (CheckpointSpec((str(one), str(two)), [str(one), str(two)], calibration="none"), np.array([0.4, 0.4, 0.2])),
    ]:
        probs, _ = probabilities(load_predictor(spec), paths, batch_size=2, num_workers=0)
        for row in probs.values():
            np.testing.assert_allclose(row, expected, atol=1e-5)


def test_old_checkpoints_load_uncalibrated():
    task = load_task(OLD_RUN / "checkpoints" / "best.ckpt")
    assert task.temperature is None


class ConstantLogits(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor([[1.0, 0.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], 3) + 0 * x.mean()


def exported_model(folder: Path, temperature) -> Path:
    """A TorchScript model with the metadata export writes (as far as predict reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.trace(ConstantLogits(), torch.zeros(1, 3, 32, 32)).save(str(folder / "model.torchscript.pt"))
    meta = {"task": "classification", "class_names": ["a", "b", "c"],
            "input": InputSpec.from_data_config(DATA).to_dict(),
            "export": {"format": "torchscript", "include_preprocessing": False}}
    if temperature != "absent":
        meta["temperature"] = temperature
    (folder / "model.meta.json").write_text(json.dumps(meta))
    return folder / "model.torchscript.pt"


def test_exported_models_divide_by_the_metadata_temperature(tmp_path):
    paths = write_images(tmp_path / "in", 2)
    logits = torch.tensor([1.0, 0.0, -1.0])
    for temperature, calibration, expected in [(3.0, "temperature", 3.0), (3.0, "none", 1.0),
                                               (None, "temperature", 1.0), ("absent", "temperature", 1.0)]:
        model = exported_model(tmp_path / f"m-{temperature}", temperature)
        probs, _ = probabilities(exported_predictor(model, calibration=calibration), paths, 2, 0)
        np.testing.assert_allclose(probs[0], torch.softmax(logits / expected, 0).numpy(), atol=1e-6)
    with pytest.raises(ExportedModelError, match="temperature=-1"):
        exported_predictor(exported_model(tmp_path / "bad", -1), calibration="temperature")


def top_log_odds(record: dict) -> float:
    """log(p1 / p2) of a two-class record's `top_k` column (`label:prob;label:prob`)."""
    first, second = (float(part.split(":")[1]) for part in record["top_k"].split(";"))
    return float(np.log(first / second))


def records(table) -> list[dict]:
    return table.to_dict("records") if hasattr(table, "to_dict") else table


@pytest.mark.slow
def test_fit_stores_the_temperature_reports_it_and_predict_applies_it(image_folder, fast, tmp_path):
    import transferkit
    from transferkit.cli import app as cli

    results = cli.run(["fit", "recipe=small_similar", "finetune=full", f"data.root={image_folder}", *fast])
    temperature, run_dir = results["calibration"]["temperature"], Path(results["run_dir"])
    assert temperature > 0 and {"test/ece_uncalibrated", "test/ece", "test/nll_uncalibrated", "test/nll"} <= set(results["metrics"])
    assert set(results["calibration"]["ci95"]) >= {"test/ece", "test/nll", "test/ece_drop", "test/nll_drop"}
    for name in ("best.ckpt", "last.ckpt"):
        assert torch.load(run_dir / "checkpoints" / name, weights_only=True)[TEMPERATURE_KEY] == pytest.approx(temperature)
    assert (run_dir / "report" / "reliability.png").is_file() and "Calibration (test)" in (run_dir / "report.html").read_text()
    saved = json.loads((run_dir / "spec.json").read_text())
    assert saved["calibration"] == "temperature"

    image = np.asarray(Image.open(next(image_folder.rglob("*.png"))))
    run = transferkit.load(run_dir)
    calibrated, raw = (records(run.predict([image], top_k=2, calibration=c))[0] for c in ("temperature", "none"))
    assert calibrated["label"] == raw["label"]
    assert top_log_odds(calibrated) * temperature == pytest.approx(top_log_odds(raw), rel=1e-3, abs=1e-4)

    off = cli.run(["fit", "recipe=small_similar", "finetune=full", f"data.root={image_folder}", *fast[:-1],
                   f"run_dir={tmp_path / 'off'}", "calibration=none"])
    assert off["calibration"] == {"method": "none"} and "test/ece" not in off["metrics"]
    assert TEMPERATURE_KEY not in torch.load(Path(off["best_checkpoint"]), weights_only=True)
