"""Every layer of a model as it ran once: kind, output, own parameters and FLOPs, and what its
output has seen (receptive field, depth), with the course's formulas beside the measured values.
The `summary` command groups these records into stages."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from transferkit.evaluation.arithmetic import NORMS, ArithmeticTracer, Trace, WindowOp, _first, _tensors


@dataclass
class LayerRecord:
    """One module as it ran: what it is, its output, its own parameters, FLOPs and trace."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    formula_params: int | None
    activation_bytes: int
    flops: int
    formula_flops: int | None
    trace: Trace
    windows: list[WindowOp] = field(default_factory=list)
    order: int = 0
    param_names: list[str] = field(default_factory=list)


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        k = "x".join(str(v) for v in module.kernel_size)
        groups = f", groups {module.groups}" if module.groups > 1 else ""
        return f"conv {k}/{_first(module.stride)}{groups}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return f"{'max' if isinstance(module, nn.MaxPool2d) else 'avg'}pool {_first(module.kernel_size)}/{_first(module.stride)}"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or "Pool" in type(module).__name__:
        return "global pool" if "Adaptive" in type(module).__name__ or "Select" in type(module).__name__ else "pool"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, NORMS) or "Norm" in type(module).__name__:
        return "norm"
    return type(module).__name__.lower()


def formula_params(module: nn.Module) -> int | None:
    """The course's parameter count for convs, linears and norms (None for other layers)."""
    bias = getattr(module, "bias", None)
    extra = int(bias.numel()) if isinstance(bias, torch.Tensor) else 0
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size)
        return k * module.in_channels // module.groups * module.out_channels + extra
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features + extra
    if isinstance(module, NORMS) and getattr(module, "weight", None) is not None:
        return int(module.weight.numel()) + extra
    return None


def formula_flops(module: nn.Module, output: torch.Tensor) -> int | None:
    """2 x multiply-adds: conv K*K*(C_in/groups)*C_out*H'*W'; linear in*out per output row."""
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        k = math.prod(module.kernel_size)
        return 2 * k * module.in_channels // module.groups * output.numel()
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * output.numel()
    return None


def _module_flops(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Each module's own FLOPs (its total minus its children's), named by `named_modules()`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, depth=None) as counter, torch.no_grad():
        model(example)
    root = type(model).__name__
    totals = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    total_of = {name: totals.get(f"{root}.{name}" if name else root, 0) for name, _ in model.named_modules()}
    own = {}
    for name, module in model.named_modules():
        children = sum(total_of[f"{name}.{c}" if name else c] for c, _ in module.named_children())
        own[name] = total_of[name] - children
    own["__total__"] = sum(counter.get_flop_counts().get("Global", {}).values())
    return own


def trace_layers(model: nn.Module, example: torch.Tensor) -> tuple[list[LayerRecord], dict]:
    """Run `model` once on `example` and describe every module that has parameters, FLOPs or a
    window (conv/pool), in execution order. Returns the records and the totals."""
    model.eval()
    flops = _module_flops(model, example)
    tracer = ArithmeticTracer()
    records: dict[str, LayerRecord] = {}
    order: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}
    windows_before: dict[str, int] = {}

    executed: list[str] = []

    def before(module, _inputs):
        windows_before[names[id(module)]] = len(tracer.windows)
        executed.append(names[id(module)])

    def after(module, _inputs, output):
        name = names[id(module)]
        own_params = list(module.named_parameters(recurse=False))
        is_leaf = not any(True for _ in module.children())
        windows = tracer.windows[windows_before.get(name, len(tracer.windows)):] if is_leaf else []
        pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
        listed = own_params or flops.get(name) or windows or (is_leaf and isinstance(module, pools))
        if not listed or name in records or (not name and not flops.get(name)):
            return
        outs = _tensors(output)
        first = outs[0] if outs else torch.zeros(0)
        traces = [t for t in (tracer.trace_of(o) for o in outs) if t is not None]
        records[name] = LayerRecord(
            name=name or type(model).__name__, kind=layer_kind(module) if is_leaf else f"{type(module).__name__.lower()} (own ops)",
            output_shape=tuple(first.shape), params=sum(p.numel() for _, p in own_params),
            formula_params=formula_params(module) if is_leaf else None,
            activation_bytes=sum(o.numel() * o.element_size() for o in {id(o): o for o in outs}.values()) if is_leaf else 0,
            flops=flops.get(name, 0), formula_flops=formula_flops(module, first) if is_leaf else None,
            trace=traces[0] if traces else Trace(), windows=list(windows), order=len(order),
            param_names=[f"{name}.{n}" if name else n for n, _ in own_params])
        order.append(name)

    handles = [m.register_forward_pre_hook(before) for m in model.modules()]
    handles += [m.register_forward_hook(after) for m in model.modules()]
    try:
        with torch.no_grad(), tracer:
            tracer.mark_input(example)
            out = model(example)
    finally:
        for handle in handles:
            handle.remove()
    # Parameters of modules that did not run as modules (e.g. a ViT's cls_token on the root).
    counted = {n for r in records.values() for n in r.param_names}
    for name, module in model.named_modules():
        own = [(f"{name}.{n}" if name else n, p) for n, p in module.named_parameters(recurse=False)]
        missing = [(n, p) for n, p in own if n not in counted]
        if missing:
            key = name or type(model).__name__
            record = records.get(name)
            if record is None:
                records[name] = LayerRecord(key, "parameters (embeddings)", (), sum(p.numel() for _, p in missing), None,
                                            0, 0, None, Trace(), order=-1, param_names=[n for n, _ in missing])
            else:
                record.params += sum(p.numel() for _, p in missing)
                record.param_names += [n for n, _ in missing]
    final = tracer.trace_of(_tensors(out)[0]) or Trace()
    rows = sorted(records.values(), key=lambda r: r.order)
    totals = {"params": sum(p.numel() for p in model.parameters()), "flops": flops["__total__"],
              "output_shape": tuple(_tensors(out)[0].shape), "depth": final.depth, "rf": final.rf,
              "executed": list(dict.fromkeys(executed))}
    return rows, totals
