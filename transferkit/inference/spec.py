"""What `test` and `predict` are asked to evaluate, as planning reads it from the config
(`transferkit.planning.checkpoint`): plain frozen values, no config."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckpointSpec:
    """What `test` and `predict` evaluate: checkpoints (several: an ensemble, each member preparing
    images its own way) with test-time augmentation, or one model file written by `export`."""

    paths: tuple[str, ...]
    recorded: str | list[str]  # results.json's `checkpoint`: the one path, or the list (an ensemble)
    tta: str = "none"
    exported: bool = False
    calibration: str = "temperature"  # temperature: divide logits by the model's own temperature; none: do not

    @property
    def single(self) -> bool:
        """One model without TTA: its logits as they are (an ensemble or TTA averages probabilities)."""
        return self.exported or (len(self.paths) == 1 and self.tta == "none")


@dataclass(frozen=True)
class PredictSpec:
    """What `predict` does: the model, the images (`input`), where the CSV or masks go, and how."""

    model: CheckpointSpec
    input: str
    output: str | None = None
    top_k: int = 3
    batch_size: int = 64
    num_workers: int = 0
    run_dir: str | None = None
    config: dict = field(default_factory=dict, compare=False)  # the composed config (config.yaml); never read
