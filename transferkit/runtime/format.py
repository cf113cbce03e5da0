"""The format version of what a run leaves on disk (checkpoints, run directories), and the one place
that reads older formats.

Paths (version 2, no new field): a run's own files are named relative to its directory in results.json,
spec.json, config.yaml (`run_dir: .`), a checkpoint's `transferkit_spec` outputs and its ModelCheckpoint
state (`dirpath: "."`, `best_model_path: "best.ckpt"`: relative to the checkpoint's folder). Older runs
hold absolute paths there; they are read as moved along with their directory (`runtime/run_paths.py`,
`runtime/checkpoint_state.py`), so no migration step is needed.

Version 1: before the version was recorded (no key). Version 2: checkpoints carry
`transferkit_format_version` and the run's spec (`transferkit_spec`, `RunSpec.to_dict()`, plain values);
run directories carry `spec.json` and `format_version` in results.json. A later field (a calibration
temperature, tuned thresholds, relative paths) bumps `FORMAT_VERSION` and adds one step to `migrate_*`,
unless it is optional: absent means the old behaviour, so every older checkpoint reads as it did.

Optional fields of version 2:
- `transferkit_temperature` (float > 0, `TEMPERATURE_KEY`): the calibration temperature fitted on the
  validation split after training (`calibration=temperature`; `transferkit.training.calibrate`). Absent:
  1.0, uncalibrated (older checkpoints, `calibration=none`, segmentation). Predictions divide the logits by it
  (`transferkit.tasks.calibration.apply_temperature`); the weights and every training metric are unchanged.
- `transferkit_thresholds` (list of floats in [0, 1], one per class, `THRESHOLDS_KEY`): a multi-label
  model's decision thresholds, tuned per class on the validation split after training (max F1;
  `transferkit.training.thresholds`). Absent: 0.5 for every class (single-label and older checkpoints).
  `predict`, ensembles (the members' mean), `export` (model.meta.json `thresholds`) and `serve` apply them.
- Classification hyperparameters `monitor` (the selection metric), `logit_adjust` and `class_priors` (the train
  split's class frequencies) with the persistent buffer `log_priors` (only with `logit_adjust`):
  `transferkit.planning.balance`. Absent: `val/acc`, no adjustment (older checkpoints load as before).
- The datamodule's state (Lightning's `ClassificationDataModule` key) `{"stream_loader": ...}`: a streamed,
  optimized data.root's training `StreamingDataLoader` position (`data/streaming/optimized.StreamPosition`), so
  `fit resume=` continues a mid-epoch checkpoint's pass exactly. Absent or empty: the epoch's pass starts anew
  (folders, embedded data, older checkpoints). The spec's `callbacks.checkpoint_every_steps` (int; absent:
  None, no step-based mid-epoch checkpoint) is optional the same way.
"""

from __future__ import annotations

from transferkit.errors import ConfigError

FORMAT_VERSION = 2
FORMAT_KEY = "transferkit_format_version"
SPEC_KEY = "transferkit_spec"
TEMPERATURE_KEY = "transferkit_temperature"
THRESHOLDS_KEY = "transferkit_thresholds"


def format_version(record: dict, key: str = FORMAT_KEY) -> int:
    """The version a checkpoint (or a run record, with `key="format_version"`) was written in."""
    return int(record.get(key) or 1)


def checkpoint_temperature(checkpoint: dict) -> float | None:
    """The calibration temperature a checkpoint carries (None: not calibrated)."""
    value = checkpoint.get(TEMPERATURE_KEY)
    return None if value is None else float(value)


def checkpoint_thresholds(checkpoint: dict) -> list[float] | None:
    """A multi-label checkpoint's tuned per-class thresholds (None: 0.5 for every class)."""
    value = checkpoint.get(THRESHOLDS_KEY)
    return None if value is None else [float(t) for t in value]


def check_readable(version: int, what: str) -> None:
    if version > FORMAT_VERSION:
        raise ConfigError(f"{what} was written by a newer transferkit (format {version}; this one reads up to "
                          f"{FORMAT_VERSION}); upgrade transferkit to read it.")


def migrate_checkpoint(checkpoint: dict, what: str = "the checkpoint") -> dict:
    """A checkpoint's contents in this release's format (in place; returns it)."""
    version = format_version(checkpoint)
    check_readable(version, what)
    if version < 2:  # 1 -> 2: hyperparameters are unchanged; the spec was not recorded
        checkpoint.setdefault(SPEC_KEY, None)
    checkpoint[FORMAT_KEY] = FORMAT_VERSION
    return checkpoint


def migrate_results(results: dict, what: str = "results.json") -> dict:
    """A run directory's results.json in this release's format (a new dict)."""
    version = format_version(results, "format_version")
    check_readable(version, what)
    return {**results, "format_version": FORMAT_VERSION, "format_read": version}
