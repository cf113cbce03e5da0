"""The one predictor (`transferkit.inference.predictor`): one model, an ensemble and TTA read inputs
through one dataset and give the same records; unreadable inputs are reported, not fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.test_ensemble_tta import constant_task, save_checkpoint
from transferkit.inference.predictor import (PredictDataset, collate, ensemble_predictor, load_predictor,
                                             predict_files, predict_inputs, probabilities, task_predictor)
from transferkit.inference.spec import CheckpointSpec
from transferkit.tasks.ensemble import EnsembleTask


def write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"{i}.png" for i in range(3)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    (folder / "broken.png").write_bytes(b"not a png")
    return [*paths, folder / "broken.png"]


def test_one_dataset_serves_every_member_and_reports_unreadable_inputs(tmp_path):
    paths = write_images(tmp_path / "in")
    one, two = constant_task([0.6, 0.3, 0.1]), constant_task([0.1, 0.8, 0.1], data={
        "image_size": 48, "in_chans": 1, "mean": [0.5], "std": [0.5], "interpolation": "bilinear"})
    predictor = ensemble_predictor(EnsembleTask([one, two]))
    dataset = PredictDataset(paths, predictor.in_chans, predictor.transforms)
    views, index, reason = dataset[0]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32), (1, 48, 48)] and index == 0 and reason == ""
    assert dataset[3][0] == () and "broken.png" in dataset[3][2]
    batch, indices, failed = collate([dataset[i] for i in range(4)])
    assert [tuple(v.shape) for v in batch] == [(3, 3, 32, 32), (3, 1, 48, 48)] and indices == [0, 1, 2]
    assert [i for i, _ in failed] == [3]


def test_one_model_and_an_ensemble_of_it_give_the_same_probabilities(tmp_path):
    paths = write_images(tmp_path / "in")
    task = constant_task([0.6, 0.3, 0.1])
    single, ensemble = task_predictor(task), ensemble_predictor(EnsembleTask([task]))
    probs, failed = probabilities(single, paths, batch_size=2, num_workers=0)
    same, _ = probabilities(ensemble, paths, batch_size=2, num_workers=0)
    assert sorted(probs) == [0, 1, 2] and [i for i, _ in failed] == [3]
    for i in probs:
        np.testing.assert_allclose(probs[i], [0.6, 0.3, 0.1], atol=1e-6)
        np.testing.assert_allclose(same[i], probs[i], atol=1e-7)


def test_files_and_images_in_memory_give_the_same_records(tmp_path):
    paths = write_images(tmp_path / "in")
    predictor = task_predictor(constant_task([0.2, 0.5, 0.3]))
    summary = predict_files(predictor, paths, tmp_path, top_k=2, batch_size=2)
    assert summary == {"output": str(tmp_path / "predictions.csv"), "predicted": 3, "failed": 1}
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "path,label,probability,top_k,error" and lines[1].endswith(",b,0.5000,b:0.5000;c:0.3000,")
    pixels = np.asarray(Image.open(paths[0]))
    rows = predict_inputs(predictor, [pixels, str(paths[3])], [0, str(paths[3])], top_k=5)
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    assert rows[0]["label"] == "b" and rows[0]["top_k"] == "b:0.5000;c:0.3000;a:0.2000"
    assert rows[1]["error"] and rows[1]["label"] == ""


def test_load_predictor_reads_what_ckpt_path_named(tmp_path):
    ckpt = save_checkpoint(constant_task([0.6, 0.3, 0.1]), tmp_path / "run" / "checkpoints" / "best.ckpt")
    single = load_predictor(CheckpointSpec((str(ckpt),), str(ckpt)))
    averaged = load_predictor(CheckpointSpec((str(ckpt), str(ckpt)), [str(ckpt)] * 2, "multiscale"))
    assert single.kind == averaged.kind == "classification" and single.class_names == ["a", "b", "c"]
    x = [torch.zeros(1, 3, 32, 32)]
    torch.testing.assert_close(single.scores(x, None), torch.tensor([[0.6, 0.3, 0.1]]))
    torch.testing.assert_close(averaged.scores(x * 2, None), torch.tensor([[0.6, 0.3, 0.1]]))
