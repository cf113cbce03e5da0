"""Does the exported model compute what the PyTorch model computes? Logits compared image by image.

Classification passes when every logit is within `1e-4 + 1e-3 |logit|` and every argmax agrees;
images whose top-2 margin is under 1e-3 (near ties) are counted apart and may flip. Segmentation
passes when the logits are within the same tolerance and at least 99.99 % of pixels agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

ABS_TOL, REL_TOL = 1e-4, 1e-3
NEAR_TIE = 1e-3
MIN_PIXEL_AGREEMENT = 0.9999
SHOWN_FAILURES = 5


def top2_margin(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    top = np.sort(logits, axis=axis)
    return np.take(top, -1, axis=axis) - np.take(top, -2, axis=axis)


@dataclass
class ParityTally:
    """Running comparison over batches of `(names, reference logits, exported logits)`."""

    kind: str
    images: int = 0
    values: int = 0
    max_abs_diff: float = 0.0
    outside_tolerance: int = 0
    argmax_agree: int = 0
    near_ties: int = 0
    near_tie_flips: int = 0
    pixels: int = 0
    pixels_agree: int = 0
    failures: list[dict] = field(default_factory=list)

    def add(self, names: list[str], ref: np.ndarray, got: np.ndarray) -> None:
        if ref.shape != got.shape:
            raise ValueError(f"exported logits have shape {got.shape}, the PyTorch model's {ref.shape}")
        delta = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        outside = delta > ABS_TOL + REL_TOL * np.abs(ref)
        self.images += len(names)
        self.values += delta.size
        self.max_abs_diff = max(self.max_abs_diff, float(delta.max(initial=0.0)))
        self.outside_tolerance += int(outside.sum())
        agree = ref.argmax(axis=1) == got.argmax(axis=1)
        near = top2_margin(ref) < NEAR_TIE
        if self.kind == "segmentation":
            self._add_pixels(names, delta, outside, agree, near)
        else:
            self._add_images(names, delta, outside, agree, near, ref, got)

    def _add_images(self, names, delta, outside, agree, near, ref, got) -> None:
        self.argmax_agree += int(agree.sum())
        self.near_ties += int(near.sum())
        self.near_tie_flips += int((~agree & near).sum())
        for i in np.flatnonzero(outside.any(axis=1) | (~agree & ~near)):
            self._fail({"image": names[i], "max_abs_diff": float(delta[i].max()),
                        "argmax": [int(ref[i].argmax()), int(got[i].argmax())]})

    def _add_pixels(self, names, delta, outside, agree, near) -> None:
        self.pixels += agree.size
        self.pixels_agree += int(agree.sum())
        self.near_ties += int(near.sum())
        self.near_tie_flips += int((~agree & near).sum())
        for i in range(len(names)):
            if outside[i].any() or not agree[i].all():
                self._fail({"image": names[i], "max_abs_diff": float(delta[i].max()),
                            "pixel_agreement": float(agree[i].mean())})

    def _fail(self, item: dict) -> None:
        if len(self.failures) < SHOWN_FAILURES:
            self.failures.append(item)

    def report(self) -> dict:
        """What metadata and the log record; `passed` applies the rule above."""
        out = {"images": self.images, "max_abs_logit_diff": self.max_abs_diff,
               "tolerance": f"|d| <= {ABS_TOL:g} + {REL_TOL:g} |logit|", "logits_outside_tolerance": self.outside_tolerance,
               "near_tie_margin": NEAR_TIE, "near_ties": self.near_ties, "near_tie_flips": self.near_tie_flips}
        if self.kind == "segmentation":
            agreement = self.pixels_agree / max(self.pixels, 1)
            out.update(pixels=self.pixels, pixel_agreement=agreement, min_pixel_agreement=MIN_PIXEL_AGREEMENT)
            passed = agreement >= MIN_PIXEL_AGREEMENT and not self.outside_tolerance
        else:
            out["argmax_agreement"] = self.argmax_agree / max(self.images, 1)
            disagreeing = self.images - self.argmax_agree - self.near_tie_flips
            out["argmax_disagreements"] = disagreeing
            passed = not self.outside_tolerance and disagreeing == 0
        out["passed"] = bool(passed and self.images > 0)
        out["first_failures"] = list(self.failures)
        return out


Batches = Iterable[tuple[list[str], torch.Tensor, torch.Tensor]]


def check_parity(kind: str, reference: torch.nn.Module, exported: Callable, batches: Batches) -> dict:
    """Run both models on each `(names, normalised float batch, exported model's input batch)`."""
    tally = ParityTally(kind)
    with torch.inference_mode():
        for names, floats, prepared, *_ in batches:
            tally.add(names, reference(floats).numpy(), np.asarray(exported(prepared)))
    return tally.report()


def describe(report: dict) -> str:
    """One line for the log and for a failure."""
    text = (f"{report['images']} images, max |dlogit| {report['max_abs_logit_diff']:.3g}, "
            f"{report['logits_outside_tolerance']} logits outside {report['tolerance']}")
    if "pixel_agreement" in report:
        text += f", pixel agreement {100 * report['pixel_agreement']:.4f} % (needs >= 99.99 %)"
    else:
        text += (f", argmax agreement {100 * report['argmax_agreement']:.2f} % "
                 f"({report['argmax_disagreements']} disagreeing)")
    return text + f", {report['near_ties']} near ties (top-2 margin < {NEAR_TIE:g}; {report['near_tie_flips']} flipped)"
