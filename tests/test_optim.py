"""build_optimizer: names, per-group LR scales, weight decay defaults, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from transferkit.errors import ConfigError
from transferkit.tasks.optim import OPTIMIZERS, build_optimizer


def groups() -> list[dict]:
    torch.manual_seed(0)
    head, body = nn.Linear(4, 2), nn.Linear(4, 4)
    return [
        {"name": "head", "params": [head.weight], "weight_decay": 0.05, "lr_scale": 1.0},
        {"name": "head_no_decay", "params": [head.bias], "weight_decay": 0.0, "lr_scale": 1.0},
        {"name": "backbone.1", "params": list(body.parameters()), "lr_scale": 0.1},
    ]


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD),
     ("rmsprop", torch.optim.RMSprop)],
)
def test_each_name_builds_its_class_with_scaled_lrs(name: str, cls: type) -> None:
    opt = build_optimizer(groups(), name=name, lr=0.02, weight_decay=0.3)
    assert type(opt) is cls
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.02, 0.002])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0, 0.3]
    assert [g["name"] for g in opt.param_groups] == ["head", "head_no_decay", "backbone.1"]
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 1.0, 0.1]


def test_sgd_momentum_and_nesterov_reach_torch() -> None:
    opt = build_optimizer(groups(), name="sgd", momentum=0.8, nesterov=True)
    assert all(g["momentum"] == 0.8 and g["nesterov"] for g in opt.param_groups)


def test_adamw_betas_eps() -> None:
    opt = build_optimizer(groups(), name="adamw", betas=[0.8, 0.95], eps=1e-6)
    assert opt.param_groups[0]["betas"] == (0.8, 0.95) and opt.param_groups[0]["eps"] == 1e-6


def test_one_step_moves_weights_by_scaled_lr() -> None:
    gs = groups()
    before = gs[2]["params"][0].detach().clone()
    opt = build_optimizer(gs, name="sgd", lr=1.0, weight_decay=0.0, momentum=0.0)
    gs[2]["params"][0].grad = torch.ones_like(before)
    opt.step()
    assert torch.allclose(gs[2]["params"][0], before - 0.1)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"name": "lamb"}, "optimizer.name='lamb'"), ({"lr": 0.0}, "optimizer.lr"),
     ({"momentum": 1.5}, "optimizer.momentum"), ({"name": "sgd", "momentum": 0.0, "nesterov": True}, "nesterov"),
     ({"betas": [0.9]}, "optimizer.betas"), ({"weight_decay": -1.0}, "optimizer.weight_decay")],
)
def test_bad_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        build_optimizer(groups(), **kwargs)


def test_no_params_is_an_error() -> None:
    with pytest.raises(ValueError, match="No trainable parameters"):
        build_optimizer([], name="adamw")


def test_table_is_complete() -> None:
    assert sorted(OPTIMIZERS) == ["adam", "adamw", "rmsprop", "sgd"]


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_fused_auto_fuses_on_cpu_and_matches_torchs_default_step(name: str) -> None:
    fused, plain = build_optimizer(groups(), name=name), build_optimizer(groups(), name=name, fused=False)
    assert all(g["fused"] for g in fused.param_groups) and not any(g["fused"] for g in plain.param_groups)
    for opt in (fused, plain):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        opt.step()
    for a, b in zip(fused.param_groups, plain.param_groups):
        for p, q in zip(a["params"], b["params"]):
            torch.testing.assert_close(p, q)


def test_fused_auto_leaves_rmsprop_and_fp16_grad_scaling_unfused() -> None:
    assert build_optimizer(groups(), name="rmsprop", fused="auto").defaults.get("fused") is None
    assert not build_optimizer(groups(), name="adamw", grad_scaler=True).defaults["fused"]
    assert build_optimizer(groups(), name="adamw", fused=True, grad_scaler=True).defaults["fused"]


def test_fused_auto_falls_back_where_torch_has_no_kernel() -> None:
    complex_param = [{"params": [nn.Parameter(torch.zeros(3, dtype=torch.complex64))]}]
    assert not build_optimizer(complex_param, name="adamw").defaults["fused"]
    with pytest.raises(ConfigError, match=r"optimizer.fused=true: torch has no fused adamw for these parameters \(cpu complex64\)"):
        build_optimizer(complex_param, name="adamw", fused=True)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "rmsprop", "fused": True}, "torch has no fused rmsprop"),
    ({"name": "adamw", "fused": True, "grad_scaler": True, "clips_gradients": True}, "16-mixed"),
    ({"name": "adamw", "fused": "yes"}, "must be auto, true or false"),
])
def test_fused_true_where_it_cannot_run_names_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_optimizer(groups(), **kwargs)
