"""What `export` is asked to do, as planning reads it from the config (`transferkit.planning.checkpoint`):
plain frozen values, no config."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExportSpec:
    """What `export` does: the checkpoint, the file format (`file_name` in the run directory), whether the
    graph takes uint8 pixels, and the images parity is checked on (`input`, else the run's test split).
    `quantize="int8"`: static INT8, calibrated on `calibration_images` training images and refused when the
    test accuracy drops more than `max_drop` points below the checkpoint's."""

    checkpoint: str
    format: str
    file_name: str
    include_preprocessing: bool = False
    opset: int = 18
    parity_max_images: int | None = None
    batch_size: int = 64
    input: str | None = None
    run_dir: str | None = None
    quantize: str | None = None
    calibration_images: int = 300
    max_drop: float = 1.0
    int8_scope: str = "auto"  # "all" | "branches" (transferkit.exporting.int8) | "auto" (chosen: exporting.run)
    min_agreement: float = 99.0  # int8_scope=auto keeps "all" when it keeps this % of top-1 classes on val
    config: dict = field(default_factory=dict, compare=False)  # the composed config (config.yaml); never read
