"""A conv net's arithmetic, read off one real forward pass (the `summary` command's engine).

For every layer: the output size by the course's formula N' = (N - K + 2P)/S + 1 (checked against
the tensor the layer really produced), the parameters by (k*k*c_in/groups)*c_out (+ bias),
activation memory, multiply-adds (MACs) and FLOPs (2 per multiply-add, cross-checked with
`torch.utils.flop_counter`), the receptive field and the depth in weight layers.

Receptive field and depth follow every tensor through the graph (a `TorchFunctionMode`), so
residual branches, concatenations and attention are handled as they really run:
  r' = r + (K - 1) * D * j,  j' = j * S   for a convolution or pooling window (jump j = stride so far);
  global pooling, attention and token-mixing matrix products see the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

GLOBAL = math.inf  # receptive field of a tensor that has seen the whole input
CONV_OPS = {"conv1d", "conv2d", "conv3d"}
WINDOW_POOL_OPS = {"max_pool2d", "avg_pool2d", "_max_pool2d", "max_pool2d_with_indices", "lp_pool2d"}
GLOBAL_OPS = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "scaled_dot_product_attention", "bmm", "baddbmm",
              "einsum", "softmax"}
SPATIAL_REDUCTIONS = {"mean", "sum", "amax", "max", "logsumexp", "std", "var", "adaptive_avg_pool1d"}
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.modules.normalization.RMSNorm)


@dataclass
class Trace:
    """What a tensor has seen: receptive field (px), jump (input px per output px), depth (weight layers)."""

    rf: float = 1.0
    jump: float = 1.0
    depth: int = 0


@dataclass
class WindowOp:
    """One convolution or pooling window, with the course's output-size formula checked."""

    kind: str
    size_in: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    size_out: int
    formula: int

    @property
    def ok(self) -> bool:
        return self.formula == self.size_out

    def text(self) -> str:
        k = self.kernel if self.dilation == 1 else f"{self.dilation}*({self.kernel}-1)+1"
        return f"({self.size_in}-{k}+2*{self.padding})/{self.stride}+1={self.formula}"


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil: bool = False) -> int:
    """N' = (N - K + 2P)/S + 1, with the effective kernel D*(K-1)+1 under dilation (floor, or ceil)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    return (math.ceil(span / stride) if ceil else span // stride) + 1


def _first(value, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, (tuple, list)):
        return int(value[0])
    return int(value)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class ArithmeticTracer(TorchFunctionMode):
    """Tracks a `Trace` for every tensor made during a forward pass, and records window ops."""

    def __init__(self) -> None:
        super().__init__()
        self.traces: dict[int, tuple[torch.Tensor, Trace]] = {}  # id -> (tensor kept alive, trace)
        self.windows: list[WindowOp] = []

    def mark_input(self, tensor: torch.Tensor) -> None:
        self.traces[id(tensor)] = (tensor, Trace())

    def trace_of(self, tensor: torch.Tensor) -> Trace | None:
        found = self.traces.get(id(tensor))
        return found[1] if found is not None and found[0] is tensor else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name.startswith("__") and name not in ("__matmul__", "__getitem__", "__add__", "__mul__",
                                                   "__iadd__", "__radd__", "__rmul__", "__imul__"):
            return out
        inputs = [t for t in (self.trace_of(x) for x in _tensors(args) + _tensors(kwargs)) if t is not None]
        outputs = _tensors(out)
        if not inputs or not outputs:
            return out
        seen = Trace(max(t.rf for t in inputs), max(t.jump for t in inputs), max(t.depth for t in inputs))
        if name in CONV_OPS:
            seen = self._window(name, args, kwargs, outputs[0], seen, weight=_arg(args, kwargs, 1, "weight"))
        elif name in WINDOW_POOL_OPS:
            seen = self._window(name, args, kwargs, outputs[0], seen)
        elif name == "linear":
            seen = Trace(seen.rf, seen.jump, seen.depth + 1)
        elif name in GLOBAL_OPS or self._mixes_space(name, args, kwargs, outputs[0]):
            seen = Trace(GLOBAL, seen.jump, seen.depth)
        for tensor in outputs:
            self.traces[id(tensor)] = (tensor, seen)
        return out

    @staticmethod
    def _mixes_space(name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> bool:
        """A spatial reduction (global mean pooling) or a token-mixing matrix product."""
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in SPATIAL_REDUCTIONS and source is not None and source.dim() == 4:
            dims = _arg(args, kwargs, 1, "dim")
            dims = dims if isinstance(dims, (tuple, list)) else (dims,)
            return dims == (None,) or any(int(d) % 4 in (2, 3) for d in dims if d is not None)
        if name in ("matmul", "__matmul__"):
            tensors = [a for a in args[:2] if isinstance(a, torch.Tensor)]
            return len(tensors) == 2 and all(t.dim() >= 3 for t in tensors)
        return False

    def _window(self, name: str, args: tuple, kwargs: dict, out: torch.Tensor, seen: Trace,
                weight: torch.Tensor | None = None) -> Trace:
        source = args[0]
        if weight is not None:
            kernel = int(weight.shape[2]) if weight.dim() > 2 else 1
            stride = _first(_arg(args, kwargs, 3, "stride", 1), 1)
            padding = _arg(args, kwargs, 4, "padding", 0)
            dilation = _first(_arg(args, kwargs, 5, "dilation", 1), 1)
            kind, ceil = "conv", False
        else:
            kernel = _first(_arg(args, kwargs, 1, "kernel_size"))
            stride = _first(_arg(args, kwargs, 2, "stride", None) or kernel, kernel)
            padding = _arg(args, kwargs, 3, "padding", 0)
            dilation = _first(_arg(args, kwargs, 4, "dilation", 1), 1) if "max" in name else 1
            ceil = bool(_arg(args, kwargs, 5 if "max" in name else 4, "ceil_mode", False))
            kind = "maxpool" if "max" in name else "pool"
        size_in = int(source.shape[2]) if source.dim() >= 3 else 1
        if isinstance(padding, str):  # 'same' keeps the size at stride 1; 'valid' pads nothing
            padding = (dilation * (kernel - 1)) // 2 if padding == "same" else 0
        padding = _first(padding)
        formula = output_size(size_in, kernel, stride, padding, dilation, ceil)
        size_out = int(out.shape[2]) if out.dim() >= 3 else 1
        if padding and size_out != formula and padding == (dilation * (kernel - 1)) // 2 and stride == 1:
            formula = size_in  # 'same' padding with an even kernel pads one side more
        self.windows.append(WindowOp(kind, size_in, kernel, stride, padding, dilation, size_out, formula))
        return Trace(seen.rf + (kernel - 1) * dilation * seen.jump, seen.jump * stride,
                     seen.depth + (1 if weight is not None else 0))


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
