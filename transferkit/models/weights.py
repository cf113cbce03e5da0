"""What `model.weights` names, and where those weights are: a house backbone, a file, the Hugging
Face cache, or the hub.

`model.weights` accepts:
* `auto`: the house backbone for embedded data, else the architecture's timm weights (`hub`);
* `hub`: timm's pretrained weights, read from the local Hugging Face cache when it holds them,
  else downloaded (the one network access, and only when asked for);
* `none`: random init;
* the name of a house backbone shipped in `transferkit/assets/` (e.g. `charnet`);
* a path to `.safetensors`, `.pth`, `.pt`, `.bin` or a Lightning `.ckpt`.

Loading is `transferkit.models.weight_loading`'s job; this module only finds and describes.
"""

from __future__ import annotations

import json
import logging
import os

from importlib import resources
from pathlib import Path

from transferkit.errors import ConfigError, did_you_mean
from transferkit.models.network import WeightsUnavailableError  # noqa: F401 (re-export)
from transferkit.planning.spec import RECORD_SUMMARY, WeightsSource  # noqa: F401 - the value type planning records
from transferkit.runtime.torch_files import read_torch_file
from transferkit.models.network import check_hub_reachable

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
WEIGHTS_FILE_HINT = "pass .safetensors weights, a state dict saved by torch.save, or a transferkit checkpoint"
# The names timm tries, in its order, in a `timm/<model>` hub repository.
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
def house_backbones() -> dict[str, dict]:
    """Name -> metadata of every house backbone shipped in `transferkit/assets/`."""
    table = {}
    assets = resources.files("transferkit.assets")
    for entry in assets.iterdir():
        if entry.name.endswith(".json") and (assets / entry.name.replace(".json", ".safetensors")).is_file():
            table[entry.name.removesuffix(".json")] = json.loads(entry.read_text())
    return table


def house_weights_path(name: str) -> Path:
    return Path(str(resources.files("transferkit.assets") / f"{name}.safetensors"))


def classify_weights(weights: str | None) -> str:
    """The kind of a `model.weights` value: `none`, `auto`, `hub`, `house` or `file`."""
    value = "none" if weights is None else str(weights)
    if value.lower() in ("none", "null", ""):
        return "none"
    if value in ("auto", "hub"):
        return value
    if value in house_backbones():
        return "house"
    path = Path(value).expanduser()
    if path.is_file():
        return "file"
    choices = ["auto", "hub", "none", *sorted(house_backbones())]
    if path.suffix or os.sep in value:
        raise ConfigError(f"model.weights={value!r}: no such file. Pass an existing "
                          f"{'/'.join(FILE_SUFFIXES)} file, or one of {choices}.")
    raise ConfigError(f"model.weights={value!r} is neither a file nor one of {choices}."
                      f"{did_you_mean(value, choices)}")


def file_record(path: Path) -> dict:
    """What is known about a weights file: `<stem>.json` or `backbone.json` beside it (written by
    `pretrain`), or the model and data config inside a transferkit checkpoint; else {}."""
    for candidate in (path.with_suffix(".json"), path.parent / "backbone.json"):
        if candidate.is_file():
            try:
                record = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and "backbone" in record:
                return record
    if path.suffix == ".ckpt":
        return checkpoint_record(path)
    return {}


def checkpoint_record(path: Path) -> dict:
    """`backbone`, `in_chans`, `image_size`, `mean`, `std` from a transferkit Lightning checkpoint.

    Read weights-only: a file that would run code, or is not a checkpoint, stops here in one line.
    """
    checkpoint = read_torch_file(path, key="model.weights", hint=WEIGHTS_FILE_HINT)
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    model, data = hparams.get("model") or {}, hparams.get("data_config") or {}
    if not model.get("backbone"):
        return {}
    return {"backbone": model["backbone"], **{k: data[k] for k in
            ("in_chans", "image_size", "mean", "std", "interpolation") if k in data}}


def hub_id(backbone: str) -> str | None:
    """`timm/<architecture>.<tag>` for the architecture's (default-tag) pretrained weights, or None."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None


def find_in_hf_cache(backbone: str, cache_dir: str | None = None) -> Path | None:
    """The cached weights file of `backbone`'s timm hub repository, or None. Never downloads.

    `cache_dir` defaults to huggingface_hub's own (HF_HUB_CACHE / HF_HOME, read when it is imported).
    """
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILENAMES
    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=cache_dir, revision=revision or None)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def describe_cache(cache_dir: str | None) -> str:
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_weights_source(weights: str, backbone: str, *, cache_dir: str | None = None,
                           require_available: bool = True) -> WeightsSource:
    """Decide where `model.weights` (already past `auto` for embedded data) comes from.

    `auto`/`hub` look in the Hugging Face cache first, then at the hub. With `require_available`,
    weights that are neither cached nor reachable stop the run here, in one line naming the options.
    """
    kind = classify_weights(weights)
    if kind == "none":
        return WeightsSource("none", str(weights))
    if kind == "house":
        return WeightsSource("house", str(weights), str(house_weights_path(weights)), house_backbones()[weights])
    if kind == "file":
        path = Path(str(weights)).expanduser().resolve()
        return WeightsSource("file", str(weights), str(path), file_record(path))
    repo = hub_id(backbone)
    if repo is None:
        raise ConfigError(
            f"model.weights={weights!r}: timm has no pretrained weights for model.backbone={backbone!r}. "
            "Pass a file (model.weights=/path/to/weights.safetensors), a house backbone "
            f"({sorted(house_backbones())}), or model.weights=none to train from scratch.")
    cached = find_in_hf_cache(backbone, cache_dir)
    if cached is not None:
        log.info("Weights for %s: %s (Hugging Face cache, no download)", backbone, cached)
        return WeightsSource("hf-cache", str(weights), str(cached), {"hub_id": repo})
    if require_available:
        check_hub_reachable(backbone, missing_from=describe_cache(cache_dir), repo=repo)
    return WeightsSource("hub", str(weights), None, {"hub_id": repo})
