"""`calibration=temperature` after a fit (and after each cv fold): the best checkpoint's validation logits
fit one temperature (`transferkit.tasks.calibration`), stored in best.ckpt and last.ckpt
(`runtime.format.TEMPERATURE_KEY`); the test split's ECE and NLL before and after, with bootstrap
intervals, go to results.json. Training, the race and checkpoint selection never see it: it is fitted
once, after them, on the model `trainer.test` just evaluated."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transferkit.evaluation.calibration import DRAWS, N_BINS, calibration_scores
from transferkit.runtime.checkpoint_io import AtomicCheckpointIO
from transferkit.runtime.format import TEMPERATURE_KEY
from transferkit.runtime.torch_files import read_torch_file
from transferkit.tasks.calibration import fit_temperature

log = logging.getLogger("transferkit")


def split_logits(task, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's logits (eval mode, as `predict` computes them) and the labels of every batch of `loader`."""
    logits, labels = [], []
    was_training = task.training
    task.eval().to(device)
    with torch.inference_mode():
        for x, y in loader:
            logits.append(task(x.to(device)).float().cpu())
            labels.append(y.cpu())
    task.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def calibrate(task, data, device: torch.device, has_test: bool) -> dict:
    """Fit the temperature on `data`'s validation split; score the test split before and after.
    Returns results.json's `calibration` record (its `metrics` join the run's metrics)."""
    val_logits, val_labels = split_logits(task, data.val_dataloader(), device)
    temperature = fit_temperature(val_logits, val_labels)
    test_logits, test_labels = split_logits(task, data.test_dataloader(), device)
    metrics, ci = calibration_scores(test_logits, test_labels, temperature)
    log.info("calibration=temperature: T=%.3f (fitted on %d val images); test ECE %.4f -> %.4f, NLL %.4f -> %.4f",
             temperature, len(val_labels), metrics["test/ece_uncalibrated"], metrics["test/ece"],
             metrics["test/nll_uncalibrated"], metrics["test/nll"])
    if not has_test:
        log.warning("calibration: no test split, so the test/ece and test/nll figures are measured on the "
                    "validation images the temperature was fitted on (optimistic); add a test/ folder.")
    return {"method": "temperature", "temperature": round(temperature, 6), "fitted_on": "val",
            "val_images": len(val_labels), "tested_on": "test" if has_test else "val",
            "test_images": len(test_labels), "ece_bins": N_BINS, "bootstrap_draws": DRAWS, "ci95": ci,
            "metrics": metrics}


def store_temperature(paths: list[str | Path | None], temperature: float) -> list[str]:
    """Write the temperature into each existing checkpoint (atomically); returns the paths written."""
    written = []
    for path in paths:
        if not path or not Path(path).is_file():
            continue
        checkpoint = read_torch_file(path)
        checkpoint[TEMPERATURE_KEY] = float(temperature)
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        written.append(str(path))
    return written


def fit_calibration(method: str, task, data, trainer, has_test: bool) -> dict:
    """The fit session's calibration step (rank 0): `method` is the spec's `calibration`."""
    if method != "temperature" or not trainer.is_global_zero:
        return {"method": method}
    return calibrate(task, data, trainer.strategy.root_device, has_test)


def record_calibration(calibration: dict, results: dict) -> None:
    """The temperature into the run's final checkpoints and the scores into `results` (in place)."""
    if "temperature" in calibration:
        results["metrics"].update(calibration.pop("metrics"))
        paths = [results.get("best_checkpoint"), results.get("last_checkpoint")]
        calibration["checkpoints"] = store_temperature(paths, calibration["temperature"])
    results["calibration"] = calibration


def calibrate_members(tasks: list, names: list[str], paths: list[Path], data, device: torch.device,
                      has_test: bool) -> dict:
    """An ensemble's calibration (`finetune.combine=ensemble`): each member's own temperature, fitted on
    `data`'s validation split and stored in its checkpoint (predict divides each member's logits by its
    own); the test split's ECE and NLL of the averaged probabilities, raw and calibrated."""
    temperatures, raw, scaled = {}, [], []
    labels = None
    for task, name, path in zip(tasks, names, paths):
        val_logits, val_labels = split_logits(task, data.val_dataloader(), device)
        temperature = fit_temperature(val_logits, val_labels)
        store_temperature([path], temperature)
        temperatures[name] = round(temperature, 6)
        test_logits, labels = split_logits(task, data.test_dataloader(), device)
        raw.append(torch.softmax(test_logits.double(), 1))
        scaled.append(torch.softmax(test_logits.double() / temperature, 1))
    before, ci_before = calibration_scores(torch.stack(raw).mean(0).clamp_min(1e-12).log(), labels, 1.0)
    after, ci_after = calibration_scores(torch.stack(scaled).mean(0).clamp_min(1e-12).log(), labels, 1.0)
    metrics = {"test/ece_uncalibrated": before["test/ece_uncalibrated"], "test/ece": after["test/ece"],
               "test/nll_uncalibrated": before["test/nll_uncalibrated"], "test/nll": after["test/nll"]}
    ci = {key: (ci_before if key.endswith("_uncalibrated") else ci_after)[key] for key in metrics}
    log.info("calibration=temperature, per ensemble member: %s; test ECE %.4f -> %.4f, NLL %.4f -> %.4f",
             ", ".join(f"{n} T={t:.3f}" for n, t in temperatures.items()), metrics["test/ece_uncalibrated"],
             metrics["test/ece"], metrics["test/nll_uncalibrated"], metrics["test/nll"])
    return {"method": "temperature", "temperatures": temperatures, "fitted_on": "val",
            "tested_on": "test" if has_test else "val", "test_images": len(labels), "ece_bins": N_BINS,
            "bootstrap_draws": DRAWS, "ci95": ci, "metrics": metrics,
            "note": "per member; the scores are those of the averaged probabilities"}
