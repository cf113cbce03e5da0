"""`python -m transferkit summary model=resnet18 [data.image_size=224] [summary.layers=true]`:
the model's arithmetic, one row per stage (or per conv/pool/linear/norm layer).

Columns: output shape (N' = (N - K + 2P)/S + 1 checked against a real forward pass), parameters
((k*k*c_in/groups)*c_out + bias for convs; the total equals `sum(p.numel())`), activation memory
(float32, batch 1), MACs and FLOPs (2 per multiply-add, as `torch.utils.flop_counter` counts
them), receptive field, and whether the rows train under the configured `finetune` strategy.
`summary.compare=true` adds LeNet-5, AlexNet, VGG-16, GoogLeNet and ResNet-50 side by side.
Random weights: nothing is loaded or downloaded.
"""

from __future__ import annotations

import csv
import importlib
import logging
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import DictConfig

from transferkit.errors import ConfigError
from transferkit.evaluation.layer_records import LayerRecord, trace_layers
from transferkit.evaluation.arithmetic import GLOBAL
from transferkit.planning.plan import plan_model
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")

COLUMNS = ["row", "layers", "output_shape", "size_check", "params", "trainable", "activations_kib", "macs",
           "flops", "receptive_field"]
# The course's architectures: (label, builder name, input channels, input size, year).
COMPARED = [("LeNet-5", "lenet5", 1, 32, 1998), ("AlexNet", "alexnet", 3, 224, 2012),
            ("VGG-16", "vgg16", 3, 224, 2014), ("GoogLeNet", "googlenet", 3, 224, 2014),
            ("ResNet-50", "resnet50", 3, 224, 2015)]


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


def trainable_params(model: nn.Module, cfg: DictConfig) -> tuple[set[str], str]:
    """Backbone parameter names that train under the configured strategy (auto: shown as partial)."""
    from transferkit.tasks.finetune import trainable_names

    finetune = cfg.finetune
    strategy = str(finetune.strategy)
    if strategy == "auto":
        strategy = "partial"
        log.info("finetune=auto: the race decides; the trainable column shows finetune=partial.")
    if finetune.get("unfreeze_at_epoch") is not None:
        log.info("finetune.unfreeze_at_epoch=%s: the column shows the strategy after unfreezing.", finetune.unfreeze_at_epoch)
    return trainable_names(model, strategy, int(finetune.get("trainable_stages", 2))), strategy


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape[1:]) if shape else "-"


def fmt_rf(rf: float) -> str:
    return "global" if rf == GLOBAL else f"{int(rf)}"


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


def human(n: float, unit: str = "") -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.2f} {suffix}{unit}".rstrip()
    return f"{n:g} {unit}".rstrip()


def markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(row, c):
        v = row[c]
        return human(v) if c in ("params", "macs", "flops") and isinstance(v, int) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list[dict], columns: list[str]) -> str:
    def cell(row, c):
        v = row[c]
        return human(v) if c in ("params", "macs", "flops") and isinstance(v, int) else str(v)
    cells = [[c for c in columns]] + [[cell(r, c) for c in columns] for r in rows]
    widths = [min(40, max(len(row[i]) for row in cells)) for i in range(len(columns))]
    return "\n".join("  ".join(v[:40].ljust(w) for v, w in zip(row, widths)) for row in cells)


def write_csv(rows: list[dict], path: Path, columns: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def create_model(name: str, in_chans: int, image_size: int, num_classes: int = 0) -> nn.Module:
    """A timm architecture (random init, no download), or the course's models that timm lacks."""
    if name in ("alexnet", "googlenet"):
        import torchvision

        kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes or 1000, **kwargs)
        return model.eval()
    if name == "lenet5":
        importlib.import_module("transferkit.models.lenet")  # registers lenet5 with timm
    from transferkit.models.backbones import create_backbone

    if num_classes:
        import timm

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


def run(cfg: DictConfig) -> dict:
    from omegaconf import open_dict

    options = cfg.get("summary") or {}
    if str(cfg.model.backbone) == "lenet5":
        importlib.import_module("transferkit.models.lenet")  # registers lenet5 with timm
    if str(cfg.model.weights) in ("auto", "hub"):  # only a house name or a file implies the architecture
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.model.weights = "none"
    plan = plan_model(cfg, load_weights=False)
    cfg = plan.cfg
    name, in_chans, size = str(cfg.model.backbone), int(cfg.model.in_chans), int(cfg.data.image_size)
    model = create_model(name, in_chans, size)
    log.info("summary: %s with random weights (nothing is loaded or downloaded)", name)
    example = torch.randn(1, in_chans, size, size)
    try:
        records, totals = trace_layers(model, example)
    except RuntimeError as err:
        raise ConfigError(f"model.backbone={name!r} does not run at data.image_size={size}: "
                          f"{str(err).splitlines()[0]}. Choose another data.image_size.") from None
    trainable, strategy = trainable_params(model, cfg)
    layers = bool(options.get("layers", False))
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    rows = group_rows(records, stage_names(model), trainable, layers, sizes, totals["executed"])
    num_classes = options.get("num_classes") or _default_classes(name)
    in_features = int(getattr(model, "num_features", totals["output_shape"][-1]))
    rows.append(head_row(in_features, int(num_classes)))
    backbone_params = sum(p.numel() for p in model.parameters())
    if sum(r["params"] for r in rows[:-1]) != backbone_params:
        raise RuntimeError(f"summary: rows hold {sum(r['params'] for r in rows[:-1])} parameters, the model {backbone_params}")
    total = {"row": "total", "layers": f"depth {totals['depth'] + 1} weight layers", "output_shape": str(num_classes),
             "size_check": "ok" if all(w.ok for r in records for w in r.windows) else "MISMATCH",
             "params": sum(r["params"] for r in rows),
             "trainable": human(sum(r["params"] for r in rows if r["trainable"] == "yes")),
             "activations_kib": round(sum(r["activations_kib"] for r in rows), 1),
             "macs": sum(r["macs"] for r in rows), "flops": sum(r["flops"] for r in rows), "receptive_field": "-"}
    rows.append(total)
    columns = [c if c != "trainable" else "trainable" for c in COLUMNS]
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    header = (f"{name}, {in_chans}x{size}x{size} input, finetune={strategy}: backbone {human(backbone_params)} "
              f"parameters ({human(total['params'])} with a {num_classes}-class head), "
              f"{human(total['macs'])}MACs = {human(total['flops'])}FLOPs (flop_counter: 2 FLOPs per multiply-add)")
    md = f"# {header}\n\n{markdown(rows, columns)}\n"
    compared = compare_table() if options.get("compare", False) else []
    if compared:
        compare_columns = ["model", "year", "input", "params", "macs", "flops", "depth", "activations_kib"]
        md += f"\n## The course's architectures\n\n{markdown(compared, compare_columns)}\n"
        write_csv(compared, run_dir / "compare.csv", compare_columns)
        log.info("The course's architectures (random init):\n%s", text_table(compared, compare_columns))
    write_csv(rows, run_dir / "summary.csv", columns)
    (run_dir / "summary.md").write_text(md)
    log.info("%s\n%s", header, text_table(rows, columns))
    results = {"command": "summary", "backbone": name, "input": [in_chans, size, size], "strategy": strategy,
               "backbone_params": backbone_params, "params": total["params"], "num_classes": int(num_classes),
               "macs": total["macs"], "flops": total["flops"], "depth": totals["depth"] + 1,
               "rows": rows, "compare": compared, "run_dir": str(run_dir)}
    write_json(results, run_dir / "results.json")
    log.info("Summary: %s", run_dir / "summary.md")
    return results


def _default_classes(name: str) -> int:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return int(getattr(cfg, "num_classes", 0) or 1000) if cfg is not None else 1000
