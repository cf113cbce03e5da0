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
from dataclasses import dataclass

import torch
import torch.nn as nn
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
