"""A batch of checked images through the one predictor (`transferkit.inference.predictor`: its
preprocessing, its members, its TTA) and one answer per image: classification `{"label", "probability",
"top_k"}`, multi-label `{"labels", "probabilities"}` (the tuned thresholds applied), segmentation the
class-index mask as a palette PNG (`transferkit.data.masks`)."""

from __future__ import annotations

import io

import numpy as np

from transferkit.data.masks import index_png_image
from transferkit.inference.predictor import Predictor, predict_mask, probabilities

PNG = "image/png"


def label_answer(probs: np.ndarray, class_names: list[str], top_k: int) -> dict:
    """The top label, its probability and the `top_k` labels with theirs, most probable first."""
    order = np.argsort(-probs, kind="stable")[: max(1, min(int(top_k), len(class_names)))]
    top = [{"label": class_names[j], "probability": round(float(probs[j]), 6)} for j in order]
    return {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}


def labels_answer(probs: np.ndarray, class_names: list[str], thresholds: list[float] | None) -> dict:
    """Multi-label: the classes at or above their tuned threshold, and every class's probability."""
    cut = thresholds if thresholds is not None else [0.5] * len(class_names)
    return {"labels": [c for c, p, t in zip(class_names, probs, cut) if float(p) >= t],
            "probabilities": {c: float(p) for c, p in zip(class_names, probs)}}


def mask_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    index_png_image(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def answer_batch(predictor: Predictor, images: list, top_k: int) -> list:
    """One answer per image, in order: a label dict, PNG bytes (a mask), or `{"error": reason}` for an
    image the predictor could not prepare (the others in the batch are answered all the same)."""
    if predictor.kind == "segmentation":
        return [mask_png(predict_mask(predictor, image)[1]) for image in images]
    probs, failed = probabilities(predictor, images, batch_size=max(1, len(images)), num_workers=0)
    reasons = dict(failed)
    if predictor.kind == "multilabel":
        return [{"error": reasons[i]} if i in reasons else
                labels_answer(probs[i], predictor.class_names, predictor.thresholds) for i in range(len(images))]
    return [{"error": reasons[i]} if i in reasons else label_answer(probs[i], predictor.class_names, top_k)
            for i in range(len(images))]
