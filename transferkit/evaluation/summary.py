"""A model's arithmetic, one row per stage (or per conv/pool/linear/norm layer): the `summary` command.

Columns: output shape (N' = (N - K + 2P)/S + 1 checked against a real forward pass), parameters
((k*k*c_in/groups)*c_out + bias for convs; the total equals `sum(p.numel())`), activation memory
(float32, batch 1), MACs and FLOPs (2 per multiply-add, as `torch.utils.flop_counter` counts
them), receptive field, and whether the rows train under the configured `finetune` strategy.
Random weights: nothing is loaded or downloaded. `transferkit.evaluation.reports.summary_tables`
writes the tables.
"""

from __future__ import annotations

import importlib
import logging

import timm
import torch
import torch.nn as nn
import torchvision
from timm.models import get_pretrained_cfg

from transferkit.errors import ConfigError
from transferkit.evaluation.arithmetic import GLOBAL
from transferkit.evaluation.layer_records import LayerRecord, trace_layers
from transferkit.models.backbones import create_backbone
from transferkit.planning.spec import ModelSpec
from transferkit.tasks.finetune import trainable_names

log = logging.getLogger("transferkit")

LENET_MODULE = "transferkit.models.lenet"  # registers lenet5 with timm when imported
# The course's architectures: (label, builder name, input channels, input size, year).
COMPARED = [("LeNet-5", "lenet5", 1, 32, 1998), ("AlexNet", "alexnet", 3, 224, 2012),
            ("VGG-16", "vgg16", 3, 224, 2014), ("GoogLeNet", "googlenet", 3, 224, 2014),
            ("ResNet-50", "resnet50", 3, 224, 2015)]


def register_architecture(name: str) -> None:
    """Make `name` known to timm: lenet5 is registered only when asked for, not at `import transferkit`."""
    if name == "lenet5":
        importlib.import_module(LENET_MODULE)


def stage_of(names: list[str], stages: list[str]) -> dict[str, str]:
    """Each layer's stage: the timm `feature_info` module it sits in. Layers before a stage (the
    stem, a downsampling pool) join the next stage; layers after the last one form the head."""
    def inside(name: str) -> str | None:
        return next((s for s in stages if name == s or name.startswith(s + ".")), None)

    assigned: dict[str, str] = {}
    pending: list[str] = []
    for name in names:
        stage = inside(name)
        if stage is None:
            pending.append(name)
            continue
        assigned.update({p: stage for p in pending})
        pending = []
        assigned[name] = stage
    assigned.update({p: "head" for p in pending})
    return assigned


def stage_names(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    modules = [f["module"] for f in info] if isinstance(info, list) else getattr(info, "module_name", lambda: [])()
    return [m for m in modules if m]


def trainable_params(model: nn.Module, finetune: dict) -> tuple[set[str], str]:
    """Backbone parameter names that train under the configured strategy (auto: shown as partial)."""
    strategy = str(finetune.get("strategy"))
    if strategy == "auto":
        strategy = "partial"
        log.info("finetune=auto: the race decides; the trainable column shows finetune=partial.")
    if finetune.get("unfreeze_at_epoch") is not None:
        log.info("finetune.unfreeze_at_epoch=%s: the column shows the strategy after unfreezing.",
                 finetune["unfreeze_at_epoch"])
    return trainable_names(model, strategy, int(finetune.get("trainable_stages", 2))), strategy


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape[1:]) if shape else "-"


def fmt_rf(rf: float) -> str:
    return "global" if rf == GLOBAL else f"{int(rf)}"


def human(n: float, unit: str = "") -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.2f} {suffix}{unit}".rstrip()
    return f"{n:g} {unit}".rstrip()


def group_rows(records: list[LayerRecord], stages: list[str], trainable: set[str], layers: bool,
               sizes: dict[str, int], executed: list[str]) -> list[dict]:
    """Table rows: per stage (default) or per layer, params and FLOPs summed, last output shown."""
    runs = [r for r in records if r.order >= 0]
    extra = [r for r in records if r.order < 0]  # parameters no module ran with (cls_token, pos_embed)
    if layers:
        groups = [(r.name, [r]) for r in runs] + [(r.name, [r]) for r in extra]
    else:
        stage = stage_of([n for n in executed if n], stages)
        ordered: dict[str, list[LayerRecord]] = {}
        for record in runs:
            ordered.setdefault(stage.get(record.name, "head"), []).append(record)
        first = next(iter(ordered)) if ordered else "head"
        for record in extra:  # embeddings belong to the stem
            ordered.setdefault(first, []).append(record)
        groups = list(ordered.items())
    rows = []
    for name, members in groups:
        shown = [m for m in members if m.order >= 0] or members
        last = max(shown, key=lambda m: m.order)
        windows = [w for m in members for w in m.windows]
        names = [n for m in members for n in m.param_names]
        n_train = sum(sizes[n] for n in names if n in trainable)
        params = sum(m.params for m in members)
        labels = [name if not layers and (m.name == name or m.name.startswith(name + ".")) else m.name.split(".")[0]
                  for m in members]
        top = list(dict.fromkeys(labels))
        inside = any(m.name == name or m.name.startswith(name + ".") for m in members)
        rows.append({
            "row": name if layers or inside or name == "head" else "stem", "layers": ", ".join(top) if not layers else last.kind,
            "output_shape": fmt_shape(last.output_shape),
            "size_check": ("; ".join(w.text() for w in windows) if layers else
                           ("ok" if all(w.ok for w in windows) else "MISMATCH") if windows else "-"),
            "params": params,
            "trainable": "-" if not names else ("yes" if n_train == params else "no" if n_train == 0 else f"{n_train / params:.0%}"),
            "activations_kib": round(sum(m.activation_bytes for m in members) / 1024, 1),
            "macs": sum(m.flops for m in members) // 2, "flops": sum(m.flops for m in members),
            "receptive_field": fmt_rf(last.trace.rf),
        })
    return rows


def head_row(in_features: int, num_classes: int, tokens: int = 1) -> dict:
    params = in_features * num_classes + num_classes
    return {"row": "classifier", "layers": f"linear {in_features}->{num_classes}", "output_shape": str(num_classes),
            "size_check": "-", "params": params, "trainable": "yes", "activations_kib": round(num_classes * 4 / 1024, 1),
            "macs": in_features * num_classes * tokens, "flops": 2 * in_features * num_classes * tokens,
            "receptive_field": "global"}


def total_row(rows: list[dict], records: list[LayerRecord], depth: int, num_classes: int) -> dict:
    """The last row: every row's parameters, memory and FLOPs summed."""
    return {"row": "total", "layers": f"depth {depth} weight layers", "output_shape": str(num_classes),
            "size_check": "ok" if all(w.ok for r in records for w in r.windows) else "MISMATCH",
            "params": sum(r["params"] for r in rows),
            "trainable": human(sum(r["params"] for r in rows if r["trainable"] == "yes")),
            "activations_kib": round(sum(r["activations_kib"] for r in rows), 1),
            "macs": sum(r["macs"] for r in rows), "flops": sum(r["flops"] for r in rows), "receptive_field": "-"}


def create_model(name: str, in_chans: int, image_size: int, num_classes: int = 0) -> nn.Module:
    """A timm architecture (random init, no download), or the course's models that timm lacks."""
    if name in ("alexnet", "googlenet"):
        kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes or 1000, **kwargs)
        return model.eval()
    register_architecture(name)
    if num_classes:
        kwargs = {"img_size": image_size} if "vit" in name else {}
        return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs).eval()
    return create_backbone(name, in_chans=in_chans, image_size=image_size).eval()


def compare_table() -> list[dict]:
    """LeNet-5 (32 px) to ResNet-50 (224 px): params, MACs, FLOPs, depth in weight layers."""
    rows = []
    for label, name, chans, size, year in COMPARED:
        model = create_model(name, chans, size, num_classes=10 if name == "lenet5" else 1000)
        records, totals = trace_layers(model, torch.randn(1, chans, size, size))
        rows.append({"model": label, "year": year, "input": f"{chans}x{size}x{size}", "params": totals["params"],
                     "macs": totals["flops"] // 2, "flops": totals["flops"], "depth": totals["depth"],
                     "activations_kib": round(sum(r.activation_bytes for r in records) / 1024, 1)})
    return rows


def default_classes(name: str) -> int:
    cfg = get_pretrained_cfg(name)
    return int(getattr(cfg, "num_classes", 0) or 1000) if cfg is not None else 1000


def summarize(model_spec: ModelSpec, finetune: dict, options: dict) -> dict:
    """The planned architecture (random weights) traced once: its rows and totals, as results.json
    records them (`summary.layers`: one row per layer; `summary.num_classes`: the head's size)."""
    name, fmt = model_spec.backbone, model_spec.input
    in_chans, size = fmt.in_chans, fmt.image_size
    model = create_model(name, in_chans, size)
    log.info("summary: %s with random weights (nothing is loaded or downloaded)", name)
    try:
        records, totals = trace_layers(model, torch.randn(1, in_chans, size, size))
    except RuntimeError as err:
        raise ConfigError(f"model.backbone={name!r} does not run at data.image_size={size}: "
                          f"{str(err).splitlines()[0]}. Choose another data.image_size.") from None
    trainable, strategy = trainable_params(model, finetune)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    rows = group_rows(records, stage_names(model), trainable, bool(options.get("layers", False)), sizes,
                      totals["executed"])
    num_classes = int(options.get("num_classes") or default_classes(name))
    in_features = int(getattr(model, "num_features", totals["output_shape"][-1]))
    rows.append(head_row(in_features, num_classes))
    backbone_params = sum(p.numel() for p in model.parameters())
    if sum(r["params"] for r in rows[:-1]) != backbone_params:
        raise RuntimeError(f"summary: rows hold {sum(r['params'] for r in rows[:-1])} parameters, the model {backbone_params}")
    total = total_row(rows, records, totals["depth"] + 1, num_classes)
    rows.append(total)
    return {"command": "summary", "backbone": name, "input": [in_chans, size, size], "strategy": strategy,
            "backbone_params": backbone_params, "params": total["params"], "num_classes": num_classes,
            "macs": total["macs"], "flops": total["flops"], "depth": totals["depth"] + 1, "rows": rows}
