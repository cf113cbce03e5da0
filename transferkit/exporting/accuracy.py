"""Is an INT8 model good enough? INT8 logits differ from FP32 by design, so the tight logit check of the
FP32 formats does not apply: the quantized model is compared with the checkpoint on the labelled test
split by top-1 agreement and accuracy, and passes when its accuracy is at most `max_drop` points below
the checkpoint's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

SHOWN_DISAGREEMENTS = 5


@dataclass
class AccuracyTally:
    """Running comparison over batches of `(names, reference logits, exported logits, labels)`."""

    images: int = 0
    agree: int = 0
    reference_correct: int = 0
    exported_correct: int = 0
    disagreements: list[dict] = field(default_factory=list)

    def add(self, names: list[str], ref: np.ndarray, got: np.ndarray, labels: list[int]) -> None:
        if ref.shape != got.shape:
            raise ValueError(f"exported logits have shape {got.shape}, the PyTorch model's {ref.shape}")
        truth = np.asarray(labels)
        ref_top, got_top = ref.argmax(axis=1), got.argmax(axis=1)
        self.images += len(names)
        self.agree += int((ref_top == got_top).sum())
        self.reference_correct += int((ref_top == truth).sum())
        self.exported_correct += int((got_top == truth).sum())
        for i in np.flatnonzero(ref_top != got_top)[: SHOWN_DISAGREEMENTS - len(self.disagreements)]:
            self.disagreements.append({"image": names[i], "label": int(truth[i]),
                                       "argmax": [int(ref_top[i]), int(got_top[i])]})

    def report(self, max_drop: float) -> dict:
        """Accuracies in percent, the change in points (negative: the export is worse), and `passed`."""
        count = max(self.images, 1)
        reference, exported = 100 * self.reference_correct / count, 100 * self.exported_correct / count
        change = exported - reference
        return {"images": self.images, "top1_agreement": self.agree / count,
                "checkpoint_accuracy": round(reference, 4), "exported_accuracy": round(exported, 4),
                "accuracy_change_points": round(change, 4), "max_drop_points": max_drop,
                "passed": bool(self.images > 0 and -change <= max_drop),
                "first_disagreements": list(self.disagreements)}


Batches = Iterable[tuple[list[str], torch.Tensor, torch.Tensor, list[int]]]


def check_accuracy(reference: torch.nn.Module, exported: Callable, batches: Batches, max_drop: float) -> dict:
    """Run both models on each `(names, normalised float batch, exported model's input batch, labels)`."""
    tally = AccuracyTally()
    with torch.inference_mode():
        for names, floats, prepared, labels in batches:
            if any(label is None for label in labels):
                raise ValueError("the INT8 accuracy check needs labelled images")
            tally.add(names, reference(floats).numpy(), np.asarray(exported(prepared)), labels)
    return tally.report(max_drop)


def describe_accuracy(report: dict) -> str:
    """One line for the log and for a refusal."""
    return (f"{report['images']} images, top-1 agreement with the checkpoint "
            f"{100 * report['top1_agreement']:.2f} %, accuracy {report['exported_accuracy']:.2f} % vs the "
            f"checkpoint's {report['checkpoint_accuracy']:.2f} % ({report['accuracy_change_points']:+.2f} points; "
            f"export.max_drop={report['max_drop_points']:g})")
