"""The config of `test`, `predict` and `export`, read once: which checkpoints (or exported file) they
evaluate, on what, and the `RunSpec` a checkpoint's task is tested with (its model and input format
from the checkpoint, the data, trainer and outputs from the config)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from transferkit.data.loader_settings import choose_num_workers, usable_cpus
from transferkit.errors import ConfigError, lookup
from transferkit.exporting.formats import require_export_package, require_onnx_packages
from transferkit.exporting.samples import Samples, calibration_items, input_items, split_items
from transferkit.exporting.spec import ExportSpec
from transferkit.inference.exported import MODEL_FILES, QUANTIZED_FILES, is_exported_model, model_file
from transferkit.inference.spec import CheckpointSpec, PredictSpec
from transferkit.models.input_format import InputFormat
from transferkit.models.weights import WeightsSource
from transferkit.planning.balance import check_fit_only
from transferkit.planning.plan import assemble_spec
from transferkit.planning.rebuild import checkpoint_run_config
from transferkit.planning.spec import ModelSpec, RunSpec
from transferkit.tasks.calibration import check_calibration
from transferkit.tasks.loading import ENSEMBLE_FILE, checkpoint_paths, is_many, load_model, require
from transferkit.tasks.tta import check_tta
from transferkit.training.builders import build_datamodule

INPUT_HINT = "an image file or a folder of images"
EXPORTED_HINT = "a model.onnx / model.int8.onnx / model.torchscript.pt / model.xml written by export"
QUANTIZE_CHOICES = ("int8",)
# export.int8_scope=auto: `all` (the fastest) where it agrees with the checkpoint on the validation split, else
# `branches` (transferkit.exporting.run; benchmarks/results/inference_formats.md, int8_scope.md)
INT8_SCOPES = {"auto": "auto", "branches": "branches", "all": "all"}
CKPT_HINT = "a checkpoint written by fit, e.g. outputs/<date>/<time>/checkpoints/best.ckpt"


def checkpoint_spec(value, tta=None, *, exported: bool = False, calibration: str | None = "temperature") -> CheckpointSpec:
    """`ckpt_path`, `tta` and `calibration` checked: checkpoints (run directories expanded) or, where
    `exported` files are accepted (predict), one model written by export, which predicts without TTA."""
    tta = check_tta(tta)
    calibration = check_calibration(calibration)
    if exported and not is_many(value) and value is not None and is_exported_model(str(value)):
        path = require(value, "ckpt_path", EXPORTED_HINT)
        if tta != "none":
            raise ValueError(f"tta={tta!r} needs the checkpoint; an exported model predicts without TTA (tta=none).")
        return CheckpointSpec((str(path),), str(path), tta, exported=True, calibration=calibration)
    paths = [str(p) for p in checkpoint_paths(value)]
    return CheckpointSpec(tuple(paths), paths[0] if len(paths) == 1 and not is_many(value) else paths, tta,
                          calibration=calibration)


def predict_spec(cfg: DictConfig) -> PredictSpec:
    """`predict`'s config as a spec: every value checked before anything is loaded or written."""
    tta = cfg.get("tta")
    check_tta(tta)  # named before input= and ckpt_path=, as always
    check_fit_only(cfg.get("logit_adjust"), "predict")
    source = require(cfg.input, "input", INPUT_HINT)
    model = checkpoint_spec(cfg.ckpt_path, tta, exported=True, calibration=cfg.get("calibration"))
    workers = choose_num_workers(cfg.data.num_workers, on_gpu=torch.cuda.is_available(), cpus=usable_cpus())
    return PredictSpec(model, str(source), None if cfg.output is None else str(cfg.output), int(cfg.top_k),
                       int(cfg.data.batch_size), workers, cfg.run_dir,
                       OmegaConf.to_container(cfg, resolve=True))


class PredictPlan:
    """A planned `predict`: its `spec` (checkpoints or export, inputs, outputs, loader), every value checked
    before anything is loaded or written. The config stops here: the command hands on the spec."""

    def __init__(self, cfg: DictConfig) -> None:
        self.spec = predict_spec(cfg)


def spec_for_checkpoint(cfg: DictConfig | dict, hparams: dict, command: str, checkpoint: str | None = None) -> RunSpec:
    """The spec to evaluate a trained task with: its model and input format come from the checkpoint
    (`hparams`), the data, trainer and outputs from `cfg`. No weights are looked for: the checkpoint has them."""
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    saved, fmt = dict(hparams.get("model") or {}), dict(hparams.get("data_config") or {})
    in_chans = int(fmt.get("in_chans", saved.get("in_chans", 3)))
    model = {**config["model"], "backbone": saved.get("backbone", config["model"]["backbone"]), "in_chans": in_chans}
    data = {**config["data"], **{k: fmt[k] for k in ("image_size", "mean", "std") if k in fmt},
            "interpolation": fmt.get("interpolation", "bilinear")}
    source = f"checkpoint {checkpoint}" if checkpoint else "checkpoint"
    input_format = InputFormat(in_chans, int(data["image_size"]), tuple(float(v) for v in data["mean"]),
                               tuple(float(v) for v in data["std"]), str(data["interpolation"]), source)
    weights = (WeightsSource("file", str(checkpoint), str(checkpoint)) if checkpoint
               else WeightsSource("none", str(model.get("weights"))))
    return assemble_spec(config, command, ModelSpec(str(model["backbone"]), weights, input_format, model), data)


def plan_checkpoint_test(cfg: DictConfig) -> tuple[RunSpec, CheckpointSpec, object]:
    """`test`: the checkpoints checked, the random streams seeded, the task (an `EnsembleTask` for several
    checkpoints or TTA) loaded, and the spec that tests it on the config's data."""
    check_fit_only(cfg.get("logit_adjust"), "test")
    checkpoints = checkpoint_spec(cfg.ckpt_path, cfg.get("tta"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = load_model(checkpoints.paths, checkpoints.tta)
    first = model if checkpoints.single else model.members[0]
    return spec_for_checkpoint(cfg, dict(first.hparams), "test", checkpoints.paths[0]), checkpoints, model


def choose_quantize(value, fmt: str, source) -> str | None:
    """`export.quantize`: None (FP32) or "int8" (ONNX and OpenVINO; checked on the run's labelled test split)."""
    quantize = None if value in (None, "none", False) else str(value)
    if quantize is None:
        return None
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"export.quantize={value!r} is unknown; use one of {list(QUANTIZE_CHOICES)} or null.")
    if fmt not in QUANTIZED_FILES:
        raise ConfigError(f"export.quantize={quantize!r} needs format=onnx or format=openvino, not format={fmt!r}.")
    if source is not None:
        raise ConfigError(f"export.quantize={quantize!r} checks accuracy on the run's labelled test split, not "
                          f"input={str(source)!r}; drop input=.")
    return quantize


def choose_int8_scope(value) -> str:
    """`export.int8_scope`: what INT8 quantizes (`branches`, `all`; `auto`: chosen by measurement at export)."""
    return lookup(INT8_SCOPES, str(value or "auto"), "export.int8_scope")


def export_checkpoint(value):
    """The one checkpoint export writes: a file, or a fit run directory's `checkpoints/best.ckpt`. A run
    whose model is an ensemble (a cv run's folds, a finetune=auto run's finishers) is refused: export
    writes one network; the message names the checkpoints to export instead."""
    folder = Path(str(value)) if value is not None else None
    if folder is not None and folder.is_dir():
        members = (folder / ENSEMBLE_FILE).is_file() or (folder / "folds").is_dir()
        if members:
            names = ", ".join(str(p) for p in checkpoint_paths(folder))
            raise ConfigError(f"ckpt_path={str(folder)!r} is an ensemble ({names}); export writes one network. "
                              "Export one of them, e.g. the run's best single model: "
                              f"ckpt_path={folder / 'checkpoints' / 'best.ckpt'} (finetune=auto; a cv run: "
                              "a fold's), and predict/serve ckpt_path=<run dir> for the whole ensemble.")
        if (folder / "checkpoints" / "best.ckpt").is_file():
            value = folder / "checkpoints" / "best.ckpt"
    return require(value, "ckpt_path", CKPT_HINT)


def export_spec(cfg: DictConfig) -> ExportSpec:
    """`export`'s config as a spec; the checkpoint, the format, quantization and the exporter's packages checked."""
    check_fit_only(cfg.get("logit_adjust"), "export")
    checkpoint = export_checkpoint(cfg.ckpt_path)
    fmt = str(cfg.format)
    lookup(MODEL_FILES, fmt, "format")
    options = cfg.export
    quantize = choose_quantize(options.get("quantize"), fmt, cfg.input)
    if fmt in ("onnx", "openvino"):  # before anything is loaded or written
        require_onnx_packages()
    if fmt == "openvino":
        require_export_package("openvino", "format=openvino")
        if quantize:
            require_export_package("nncf", "format=openvino export.quantize=int8")
    calibration_images, max_drop = int(options.get("calibration_images", 300)), float(options.get("max_drop", 1.0))
    if calibration_images < 1 or not 0 <= max_drop <= 100:
        raise ConfigError(f"export.calibration_images={calibration_images!r} must be >= 1 and export.max_drop="
                          f"{max_drop!r} between 0 and 100 (accuracy points).")
    min_agreement = float(options.get("min_agreement", 99.0))
    if not 0 <= min_agreement <= 100:
        raise ConfigError(f"export.min_agreement={min_agreement!r} must be between 0 and 100 (percent of images whose "
                          "top-1 class the INT8 model keeps).")
    return ExportSpec(str(checkpoint), fmt, model_file(fmt, quantize), bool(options.include_preprocessing),
                      int(options.opset), options.get("parity_max_images"), int(cfg.data.batch_size),
                      None if cfg.input is None else str(cfg.input), cfg.run_dir,
                      config=OmegaConf.to_container(cfg, resolve=True), quantize=quantize,
                      calibration_images=calibration_images, max_drop=max_drop,
                      int8_scope=choose_int8_scope(options.get("int8_scope")), min_agreement=min_agreement)


def parity_samples(cfg: DictConfig, spec: ExportSpec, task) -> tuple[Samples, Samples | None, Samples | None]:
    """The images export checks parity on: `input=`, else the checkpoint run's test split (its data from
    the run's config.yaml, read from the files themselves, not a cache; the format from the checkpoint);
    for INT8 the training images it is calibrated on, and for `export.int8_scope=auto` the images the scope
    is chosen on (the validation split; the calibration images when it has none); else None."""
    in_chans = int(task.hparams.data_config["in_chans"])
    if spec.quantize and task.kind != "classification":
        raise ConfigError(f"export.quantize={spec.quantize!r} is for classification models; ckpt_path="
                          f"{spec.checkpoint!r} is a {task.kind} model: export it without export.quantize.")
    if spec.input is not None:
        return input_items(require(spec.input, "input", INPUT_HINT), in_chans), None, None
    if not checkpoint_run_config(spec.checkpoint).is_file():
        raise ConfigError(f"ckpt_path={spec.checkpoint!r} has no run config.yaml two folders up, so its test split is "
                          "unknown; pass input=<image file or folder> to check parity on.")
    config = OmegaConf.to_container(cfg, resolve=True)
    if "cache" in config["data"]:
        config["data"]["cache"] = False
    run_spec = spec_for_checkpoint(config, dict(task.hparams), "export", spec.checkpoint)
    datamodule = build_datamodule(run_spec.data, run_spec.model.input.in_chans)
    datamodule.scan()
    samples = split_items(datamodule, task, in_chans, run_spec.data.root)
    if not spec.quantize:
        return samples, None, None
    choice = None
    if spec.int8_scope == "auto":
        choice = (split_items(datamodule, task, in_chans, run_spec.data.root, "val")
                  if len(datamodule.sources.get("val", ())) else calibration_items(datamodule, in_chans, spec.calibration_images))
    return samples, calibration_items(datamodule, in_chans, spec.calibration_images), choice
