"""What a leak did to a model's test score: its accuracy on the test split with and without the test
images that have a copy (exact or near) in train or val (`audit ckpt_path=...`)."""

from __future__ import annotations

import numpy as np

from transferkit.errors import ConfigError
from transferkit.evaluation.audit.duplicates import Duplicate
from transferkit.evaluation.audit.images import AuditImages
from transferkit.inference.predictor import load_predictor, probabilities
from transferkit.inference.spec import CheckpointSpec


def leaked_images(images: AuditImages, pairs: list[Duplicate]) -> dict[str, list[int]]:
    """Per evaluation split (val, test): its images with a copy in an earlier split (train; for test, val too)."""
    leaked: dict[str, set[int]] = {"val": set(), "test": set()}
    for pair in pairs:
        if pair.cross:
            later = pair.b  # pairs are ordered: the later split second
            leaked.setdefault(str(images.splits[later]), set()).add(later)
    return {split: sorted(found) for split, found in leaked.items() if split in ("val", "test")}


def leak_effect(checkpoint: CheckpointSpec, images: AuditImages, leaked_test: list[int], batch_size: int,
                num_workers: int) -> dict:
    """Test accuracy of the checkpoint on all test images and on those without a copy elsewhere."""
    predictor = load_predictor(checkpoint)
    if predictor.kind != "classification" or list(predictor.class_names) != images.class_names:
        raise ConfigError(f"ckpt_path={checkpoint.recorded!r} predicts the classes {list(predictor.class_names)}, this "
                          f"data has {images.class_names}: give a checkpoint trained on this data.")
    test = images.split_indices("test")
    if not len(test):
        raise ConfigError("ckpt_path=... measures the leak on the test split, and this data has none; give the "
                          "folder a test/ split or set data.test_fraction > 0.")
    probs, failed = probabilities(predictor, [images.pixels(i) for i in test], batch_size, num_workers)
    read = np.array([k for k in range(len(test)) if k in probs], dtype=np.int64)
    right = np.array([probs[k].argmax() == images.labels[test[k]] for k in read], dtype=bool)
    clean = ~np.isin(test[read], leaked_test)
    return {"checkpoint": checkpoint.recorded, "test_images": int(len(read)), "leaked_test_images": int((~clean).sum()),
            "test_acc": float(right.mean()) if len(right) else None,
            "test_acc_without_leaked": float(right[clean].mean()) if clean.any() else None,
            "test_acc_on_leaked": float(right[~clean].mean()) if (~clean).any() else None,
            "unreadable": len(failed)}
