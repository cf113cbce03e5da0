"""Every schedule's LR curve against its closed-form definition (and torch's own schedulers)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from transferkit.tasks.schedulers import SCHEDULERS, build_scheduler, lr_curve

CONF = Path(__file__).resolve().parents[1] / "conf" / "scheduler"


def optimizer(*lrs: float) -> torch.optim.Optimizer:
    lrs = lrs or (1.0,)
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs])


def curve(max_epochs: int, steps_per_epoch: int = 1, lrs: tuple[float, ...] = (1.0,), **cfg) -> list[float]:
    return lr_curve(cfg, optimizer(*lrs), max_epochs, steps_per_epoch)[0]


def torch_curve(make, epochs: int) -> list[float]:
    opt = optimizer()
    sched = make(opt)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_per_epoch_matches_closed_form_and_torch() -> None:
    got = curve(10, name="cosine", interval="epoch")
    assert got == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 10)) for e in range(10)])
    ref = torch_curve(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10), 10)
    assert got == pytest.approx(ref, abs=1e-9)


def test_cosine_per_step_with_warmup_and_floor() -> None:
    got = curve(4, 5, name="cosine", warmup_epochs=1, warmup_start_factor=0.1, min_lr_scale=0.1)
    assert len(got) == 20
    assert got[0] == pytest.approx(0.1)
    assert got[2] == pytest.approx(0.1 + 0.9 * 2 / 5)  # linear ramp at t = 0.4 epochs
    assert got[5] == pytest.approx(1.0)  # warm-up ends at epoch 1: the cosine starts at its peak
    assert got[15] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))  # t=3: 2 of 3 epochs
    assert min(got[5:]) > 0.1 and got[-1] < 0.11  # anneals towards, never below, the floor


def test_groups_keep_their_ratio() -> None:
    curves = lr_curve({"name": "cosine", "warmup_epochs": 1}, optimizer(1.0, 0.1), 5, 4)
    assert [b / a for a, b in zip(*curves)] == pytest.approx([0.1] * 20)


def test_step_decay_falls_on_epoch_boundaries_in_step_mode() -> None:
    got = curve(4, 3, name="step", step_size=2, gamma=0.5)
    assert got == pytest.approx([1.0] * 6 + [0.5] * 6)
    per_epoch = curve(7, name="step", interval="epoch", step_size=2, gamma=0.5)
    ref = torch_curve(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5), 7)
    assert per_epoch == pytest.approx(ref)


def test_multistep_matches_torch() -> None:
    got = curve(8, name="multistep", interval="epoch", milestones=[2, 5], gamma=0.1)
    ref = torch_curve(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 5], gamma=0.1), 8)
    assert got == pytest.approx(ref)
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


def test_exponential_per_epoch_and_per_step() -> None:
    ref = torch_curve(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9), 5)
    assert curve(5, name="exponential", interval="epoch", gamma=0.9) == pytest.approx(ref)
    assert curve(2, 4, name="exponential", gamma=0.9)[3] == pytest.approx(0.9**0.75)


def test_lenet_reproduces_lecun_1998() -> None:
    got = curve(14, lrs=(5e-4,), name="lenet", interval="epoch")
    want = [5e-4] * 2 + [2e-4] * 3 + [1e-4] * 3 + [5e-5] * 4 + [1e-5] * 2
    assert got == pytest.approx(want)


@pytest.mark.parametrize(("t0", "mult", "epochs"), [(3, 1, 10), (2, 2, 14)])
def test_sgdr_matches_torch_warm_restarts(t0: int, mult: int, epochs: int) -> None:
    got = curve(epochs, name="sgdr", interval="epoch", restart_epochs=t0, restart_mult=mult)
    ref = torch_curve(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=t0, T_mult=mult), epochs)
    assert got == pytest.approx(ref, abs=1e-9)
    assert got[t0] == 1.0  # restarted


def test_onecycle_closed_form() -> None:
    got = curve(10, 2, name="onecycle", pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert got[0] == pytest.approx(1 / 25)
    assert got[6] == pytest.approx(1.0)  # peak at t = 3 epochs
    assert got[2] == pytest.approx(1 - (1 - 1 / 25) * 0.75)  # t = 1: a third of the ramp
    end = 1 / 25e4
    assert got[13] == pytest.approx(end + (1 - end) * 0.5)  # t = 6.5: half-way down
    assert max(got) == pytest.approx(1.0)


def test_plateau_reduces_after_patience_once_per_epoch() -> None:
    opt = optimizer()
    config = build_scheduler(opt, name="plateau", max_epochs=8, steps_per_epoch=3, gamma=0.5, patience=2)
    assert config["interval"] == "epoch" and config["monitor"] == "val/loss"
    got = curve(8, 1, name="plateau", gamma=0.5, patience=2)
    assert got == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25])


def test_constant_with_and_without_warmup() -> None:
    assert build_scheduler(optimizer(), name="constant", max_epochs=3, steps_per_epoch=2) is None
    assert curve(3, 2, name="constant") == [1.0] * 6
    assert curve(3, 2, name="constant", warmup_epochs=1, warmup_start_factor=0.0) == pytest.approx(
        [0.0, 0.5, 1, 1, 1, 1]
    )


def test_lightning_config_dict() -> None:
    config = build_scheduler(optimizer(), name="cosine", max_epochs=3, steps_per_epoch=2, interval="step")
    assert set(config) == {"scheduler", "interval", "frequency"}
    assert config["interval"] == "step" and config["frequency"] == 1


def test_resume_restores_position_and_checkpoint_loads_weights_only() -> None:
    kwargs = {"name": "cosine", "max_epochs": 5, "steps_per_epoch": 4, "warmup_epochs": 1}
    opt = optimizer()
    sched = build_scheduler(opt, **kwargs)["scheduler"]
    for _ in range(7):
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"sched": sched.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2 = optimizer()
    opt2.load_state_dict(state["opt"])
    sched2 = build_scheduler(opt2, **kwargs)["scheduler"]
    sched2.load_state_dict(state["sched"])
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("cfg", "key"),
    [({"name": "cosin"}, "scheduler.name='cosin'"), ({"name": "plateau", "warmup_epochs": 1}, "warmup_epochs"),
     ({"name": "onecycle", "warmup_epochs": 1}, "warmup_epochs"), ({"name": "cosine", "interval": "batch"},
     "scheduler.interval"), ({"name": "lenet", "factors": [1.0]}, "scheduler.factors"),
     ({"name": "multistep", "milestones": [5, 2]}, "scheduler.milestones"),
     ({"name": "cosine", "warmup_epochs": 10}, "scheduler.warmup_epochs"),
     ({"name": "sgdr", "restart_mult": 0}, "scheduler.restart_mult")],
)
def test_bad_config_names_the_key(cfg: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        build_scheduler(optimizer(), max_epochs=10, steps_per_epoch=2, **cfg)


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_file_builds(path: Path) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg["name"] == path.stem
    curves = lr_curve(cfg, optimizer(1.0, 0.1), max_epochs=20, steps_per_epoch=3)
    assert len(curves) == 2 and len(curves[0]) == 60 and all(lr > 0 for lr in curves[0][:-1])


def test_every_scheduler_has_a_config_file() -> None:
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(SCHEDULERS)


def test_steps_per_epoch_counts_like_lightning() -> None:
    from transferkit.evaluation.lr_schedule import steps_per_epoch

    assert steps_per_epoch(10, 4, {}) == 3
    assert steps_per_epoch(10, 4, {"accumulate_grad_batches": 2}) == 2
    assert steps_per_epoch(100, 4, {"limit_train_batches": 5}) == 5
    assert steps_per_epoch(100, 4, {"limit_train_batches": 0.2}) == 5


def test_plot_lr_command(image_folder, fast) -> None:
    import csv

    from transferkit.cli.app import run

    result = run(["plot-lr", f"data.root={image_folder}", *fast, "finetune=partial", "trainer.max_epochs=3",
                  "scheduler=cosine", "scheduler.warmup_epochs=1", "optimizer.lr=0.001"])
    assert Path(result["png"]).stat().st_size > 1000
    assert result["groups"][:2] == ["head", "head_no_decay"] and result["groups"][2].startswith("backbone.")
    assert result["lr_first"][0] == pytest.approx(1e-5) and result["lr_first"][2] == pytest.approx(1e-6)
    assert result["lr_max"][0] == pytest.approx(1e-3) and result["lr_max"][2] == pytest.approx(1e-4)
    rows = list(csv.reader(open(result["csv"])))
    assert len(rows) == 1 + 3 * result["steps_per_epoch"]
