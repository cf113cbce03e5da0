"""Fine-tuning strategies: which backbone stages train, frozen norms, and optimizer param groups.

Stages are found with timm's `group_matcher(coarse=True)` (stem, then one group per stage or
block), never by counting leaf modules. No Lightning here: tasks wire these functions into hooks.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.models import group_parameters

from transferkit.errors import ConfigError, lookup
from transferkit.planning.spec import HEAD_SOLVERS, PLAN_STRATEGIES, STRATEGIES, FinetunePlan  # noqa: F401 - the typed finetune group

log = logging.getLogger(__name__)


# What each quadrant of the size x similarity matrix trains (see docs and recipes/<quadrant>.yaml).
QUADRANT_STRATEGIES: dict[str, str] = {
    "small_similar": "freeze",
    "small_different": "partial",
    "large_similar": "full",  # most or all layers at a low LR (backbone_lr_scale),
    "large_different": "full",
}

# A parameter name no model has: it lands in timm's "unmatched" group (ordinal inf), which
# tells us which real parameters (neck, final norm) are unmatched too.
_SENTINEL = "\x00transferkit.unmatched"


def choose_strategy(quadrant: str) -> str:
    """The strategy a quadrant of the size x similarity matrix calls for."""
    return lookup(QUADRANT_STRATEGIES, quadrant, key="quadrant")


def active_strategy(plan: FinetunePlan, epoch: int = 0) -> str:
    """The strategy in force at `epoch`: `freeze` before `unfreeze_at_epoch`, then `plan.strategy`."""
    if plan.strategy == "auto":
        raise ConfigError(
            "finetune.strategy='auto' must be resolved (transferkit.commands.advise) before it is applied."
        )
    if plan.unfreeze_at_epoch is not None and epoch < plan.unfreeze_at_epoch:
        return "freeze"
    return plan.strategy


def _grouping_module(backbone: nn.Module) -> tuple[nn.Module, str] | None:
    """The module that has timm's `group_matcher` (features_only wrappers keep it in `.model`)."""
    if hasattr(backbone, "group_matcher"):
        return backbone, ""
    inner = getattr(backbone, "model", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "group_matcher"):
        return inner, "model."
    return None


def _children_groups(backbone: nn.Module) -> list[list[str]]:
    """Fallback without a group_matcher: each top-level child with parameters is one stage."""
    groups = [[n for n, _ in backbone.named_parameters(recurse=False)]]
    for child_name, child in backbone.named_children():
        names = [f"{child_name}.{n}" for n, _ in child.named_parameters()]
        if names:
            groups.append(names)
    return [g for g in groups if g]


def backbone_groups(backbone: nn.Module, coarse: bool = True) -> list[list[str]]:
    """Parameter names per group, bottom (stem) first, from timm's `group_matcher`.

    Parameters no matcher pattern covers (a neck or final norm) join the top group, so they
    train whenever the top stage trains.
    """
    found = _grouping_module(backbone)
    if found is None:
        return _children_groups(backbone)
    module, prefix = found
    matcher = module.group_matcher(coarse=coarse)
    names = [n for n, _ in module.named_parameters()]
    try:
        reverse = group_parameters(_NamedOnly(names + [_SENTINEL]), matcher, reverse=True)
    except (TypeError, ValueError, AttributeError, IndexError):  # callable matchers may reject the probe
        reverse = group_parameters(module, matcher, reverse=True)
    unmatched = reverse.pop(_SENTINEL, None)
    matched = {reverse[n] for n in names} - {unmatched}
    by_id: dict[int, list[str]] = {}
    for name in names:
        gid = reverse[name]
        if gid == unmatched and matched:
            gid = max(matched)
        by_id.setdefault(gid, []).append(prefix + name)
    return [by_id[k] for k in sorted(by_id)]


class _NamedOnly:
    """Stand-in exposing `named_parameters()` over bare names, for timm's grouping helpers."""

    def __init__(self, names: list[str]) -> None:
        self._names = names

    def named_parameters(self):  # noqa: ANN201 - mirrors nn.Module
        return ((n, None) for n in self._names)


def trainable_names(backbone: nn.Module, strategy: str, trainable_stages: int = 2) -> set[str]:
    """Names of backbone parameters that train under `strategy`."""
    match strategy:
        case "freeze":
            return set()
        case "partial":
            groups = backbone_groups(backbone, coarse=True)
            return {n for g in groups[-trainable_stages:] for n in g}
        case "full":
            return {n for n, _ in backbone.named_parameters()}
        case _:
            raise ConfigError(f"finetune.strategy={strategy!r} is unknown; use one of {list(STRATEGIES)}.")


def apply_strategy(backbone: nn.Module, plan: FinetunePlan, epoch: int = 0) -> None:
    """Set `requires_grad` for the strategy in force at `epoch`; frozen norm layers go to eval mode."""
    strategy = active_strategy(plan, epoch)
    keep = trainable_names(backbone, strategy, plan.trainable_stages)
    for name, param in backbone.named_parameters():
        param.requires_grad_(name in keep)
    for module in backbone.modules():
        if _has_running_stats(module):
            module.train(backbone.training and not _is_frozen(module, backbone))
    n_train = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in backbone.parameters())
    log.info("finetune: strategy %s at epoch %d trains %d of %d backbone parameters", strategy, epoch, n_train, n_all)


def _has_running_stats(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats


def _is_frozen(norm: nn.Module, backbone: nn.Module) -> bool:
    """A norm is frozen when all its parameters are; one without parameters, when the whole backbone is."""
    params = list(norm.parameters())
    if params:
        return not any(p.requires_grad for p in params)
    return not any(p.requires_grad for p in backbone.parameters())


def keep_frozen_norms_eval(backbone: nn.Module) -> None:
    """Put every frozen norm layer with running stats back in eval mode (call after `model.train()`)."""
    for module in backbone.modules():
        if _has_running_stats(module) and _is_frozen(module, backbone):
            module.eval()


def trainable_norms(module: nn.Module) -> list[nn.Module]:
    """Norm layers with running statistics that are not frozen (their statistics may be recomputed)."""
    return [m for m in module.modules() if _has_running_stats(m) and not _is_frozen(m, module)]


def no_decay_names(module: nn.Module, prefix: str = "") -> set[str]:
    """Parameters without weight decay: norms and biases (ndim <= 1) plus timm's `no_weight_decay()`."""
    names = {n for n, p in module.named_parameters() if p.ndim <= 1}
    found = _grouping_module(module)
    if found is not None and hasattr(found[0], "no_weight_decay"):
        skip = set(found[0].no_weight_decay())
        names |= {n for n, _ in module.named_parameters() if n.removeprefix(found[1]) in skip}
    return names


def _split_decay(name: str, params: list[torch.Tensor], no_decay: list[bool], weight_decay: float, lr_scale: float) -> list[dict]:
    decay = [p for p, nd in zip(params, no_decay) if not nd]
    plain = [p for p, nd in zip(params, no_decay) if nd]
    groups = []
    if decay:
        groups.append({"name": name, "params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale})
    if plain:
        groups.append({"name": f"{name}_no_decay", "params": plain, "weight_decay": 0.0, "lr_scale": lr_scale})
    return groups


def build_param_groups(backbone: nn.Module, head: nn.Module, plan: FinetunePlan, weight_decay: float) -> list[dict]:
    """Optimizer param groups: the head at `lr_scale` 1, each trainable backbone group below it.

    Backbone parameters are chosen by the plan's target strategy, so with `unfreeze_at_epoch` the
    groups exist from the first step (their parameters simply get no gradient while frozen) and
    never change under a live scheduler. Without layer decay there is one group per coarse stage at
    `backbone_lr_scale`; with it, one per fine group at `backbone_lr_scale * layer_decay**(top - depth)`.
    """
    groups: list[dict] = []
    head_named = [(n, p) for n, p in head.named_parameters() if p.requires_grad]
    head_nd = no_decay_names(head)
    groups += _split_decay("head", [p for _, p in head_named], [n in head_nd for n, _ in head_named], weight_decay, 1.0)
    strategy = plan.strategy if plan.strategy != "auto" else active_strategy(plan)
    wanted = trainable_names(backbone, strategy, plan.trainable_stages)
    if not wanted:
        return groups
    params = dict(backbone.named_parameters())
    backbone_nd = no_decay_names(backbone)
    layered = backbone_groups(backbone, coarse=plan.layer_decay is None)
    top = len(layered) - 1
    for depth, names in enumerate(layered):
        names = [n for n in names if n in wanted]
        if not names:
            continue
        scale = plan.backbone_lr_scale * (plan.layer_decay ** (top - depth) if plan.layer_decay else 1.0)
        groups += _split_decay(
            f"backbone.{depth}", [params[n] for n in names], [n in backbone_nd for n in names], weight_decay, scale
        )
    return groups


# Gradual unfreezing under DDP. DDP registers, once, the parameters that require grad when it
# wraps the model; parameters unfrozen later get only local gradients and ranks drift apart
# (Lightning #20340). Instead of re-wrapping, the task averages those gradients itself:
# record `tracked_param_ids(model)` in `on_fit_start` (DDP has wrapped by then) and call
# `sync_untracked_grads(model, tracked)` in `on_after_backward`.


def tracked_param_ids(module: nn.Module) -> set[int]:
    """Ids of the parameters that require grad now, i.e. those DDP tracks if it wrapped `module` now."""
    return {id(p) for p in module.parameters() if p.requires_grad}


def sync_untracked_grads(module: nn.Module, tracked: set[int]) -> int:
    """Average across ranks the gradients of trainable parameters DDP does not track.

    A no-op outside torch.distributed; returns how many gradients were averaged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    grads = [p.grad for p in module.parameters() if p.grad is not None and id(p) not in tracked]
    if not grads:
        return 0
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()
    return len(grads)
