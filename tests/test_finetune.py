"""Fine-tuning strategies on tiny timm models: trainable sets, frozen norms, param groups."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from transferkit.tasks.finetune import (
    QUADRANT_STRATEGIES,
    FinetunePlan,
    apply_strategy,
    backbone_groups,
    build_param_groups,
    choose_strategy,
    keep_frozen_norms_eval,
)

# Prefixes of the parameters that the top two coarse stages hold (unmatched necks join the top stage).
TOP_TWO = {
    "test_resnet": ("layer3.", "layer4."),
    "test_vit": ("blocks.4.", "blocks.5.", "norm."),
    "test_convnext": ("stages.2.", "stages.3.", "head.norm."),
}


def backbone(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    kwargs.setdefault("num_classes", 0)
    return timm.create_model(name, pretrained=False, **kwargs)


def trainable(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", sorted(TOP_TWO))
def test_trainable_sets_per_strategy(name: str) -> None:
    model = backbone(name)
    every = {n for n, _ in model.named_parameters()}
    apply_strategy(model, FinetunePlan(strategy="freeze"))
    assert trainable(model) == set()
    apply_strategy(model, FinetunePlan(strategy="partial", trainable_stages=2))
    expected = {n for n in every if n.startswith(TOP_TWO[name])}
    assert expected and trainable(model) == expected
    apply_strategy(model, FinetunePlan(strategy="full"))
    assert trainable(model) == every


def test_partial_counts_stages_not_leaves() -> None:
    model = backbone("test_resnet")
    assert len(backbone_groups(model)) == 5  # stem + layer1..4
    apply_strategy(model, FinetunePlan(strategy="partial", trainable_stages=1))
    assert {n.split(".")[0] for n in trainable(model)} == {"layer4"}
    apply_strategy(model, FinetunePlan(strategy="partial", trainable_stages=5))
    assert trainable(model) == {n for n, _ in model.named_parameters()}


def test_partial_on_features_only_backbone() -> None:
    model = backbone("test_resnet", num_classes=None, features_only=True)
    apply_strategy(model, FinetunePlan(strategy="partial", trainable_stages=2))
    assert {n.split(".")[0] for n in trainable(model)} == {"layer3", "layer4"}


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}


def train_steps(model: nn.Module, steps: int = 3) -> None:
    head = nn.Linear(model.num_features, 2)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model.train()
        keep_frozen_norms_eval(model)
        x = torch.randn(4, 3, 32, 32, generator=gen) * 3 + 1
        loss = head(model(x)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_frozen_bn_running_stats_unchanged_by_training() -> None:
    model = backbone("test_resnet")
    apply_strategy(model, FinetunePlan(strategy="freeze"))
    before = bn_state(model)
    train_steps(model)
    after = bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_partial_updates_only_trainable_stage_bn_stats() -> None:
    model = backbone("test_resnet")
    apply_strategy(model, FinetunePlan(strategy="partial", trainable_stages=1))
    before = bn_state(model)
    train_steps(model)
    after = bn_state(model)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"layer4"}


def test_frozen_bn_train_and_eval_outputs_equal() -> None:
    model = backbone("test_resnet")
    apply_strategy(model, FinetunePlan(strategy="freeze"))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.train()
    keep_frozen_norms_eval(model)
    train_out = model(x)
    model.eval()
    assert torch.allclose(train_out, model(x))
    # Without the fix the outputs differ: batch statistics instead of running statistics.
    model.train()
    assert not torch.allclose(train_out, model(x))


def test_param_groups_no_decay_on_norms_and_biases() -> None:
    model, head = backbone("test_resnet"), nn.Linear(32, 3)
    plan = FinetunePlan(strategy="partial", trainable_stages=2, backbone_lr_scale=0.1)
    apply_strategy(model, plan)
    groups = build_param_groups(model, head, plan, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad} | {id(p) for p in head.parameters()}
    for g in groups:
        dims = {p.ndim for p in g["params"]}
        assert (g["weight_decay"] == 0.0) == (dims <= {0, 1}), g["name"]
        assert g["lr_scale"] == (1.0 if g["name"].startswith("head") else 0.1)
    names = [g["name"] for g in groups]
    assert names == ["head", "head_no_decay", "backbone.3", "backbone.3_no_decay", "backbone.4", "backbone.4_no_decay"]


def test_vit_tokens_get_no_weight_decay() -> None:
    model = backbone("test_vit")
    plan = FinetunePlan(strategy="full")
    apply_strategy(model, plan)
    groups = build_param_groups(model, nn.Linear(model.num_features, 2), plan, weight_decay=0.05)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(model.cls_token) in no_decay and id(model.pos_embed) in no_decay


def test_layer_decay_scales() -> None:
    model = backbone("test_vit")
    plan = FinetunePlan(strategy="full", backbone_lr_scale=0.5, layer_decay=0.5)
    apply_strategy(model, plan)
    groups = build_param_groups(model, nn.Linear(model.num_features, 2), plan, weight_decay=0.0)
    scales = {g["name"].removesuffix("_no_decay"): g["lr_scale"] for g in groups}
    # 7 groups: stem (depth 0) .. blocks.5 + final norm (depth 6).
    assert scales["head"] == 1.0
    assert scales["backbone.6"] == 0.5
    assert scales["backbone.5"] == pytest.approx(0.25)
    assert scales["backbone.0"] == pytest.approx(0.5 * 0.5**6)


def test_gradual_unfreeze_groups_exist_from_start() -> None:
    model = backbone("test_resnet")
    plan = FinetunePlan(strategy="partial", trainable_stages=1, unfreeze_at_epoch=2)
    apply_strategy(model, plan, epoch=0)
    assert trainable(model) == set()
    groups = build_param_groups(model, nn.Linear(32, 2), plan, weight_decay=0.01)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert {id(p) for n, p in model.named_parameters() if n.startswith("layer4.")} <= in_groups
    apply_strategy(model, plan, epoch=1)
    assert trainable(model) == set()
    apply_strategy(model, plan, epoch=2)
    assert {n.split(".")[0] for n in trainable(model)} == {"layer4"}


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"strategy": "fine"}, "finetune.strategy"),
        ({"trainable_stages": 0}, "finetune.trainable_stages"),
        ({"backbone_lr_scale": 0.0}, "finetune.backbone_lr_scale"),
        ({"layer_decay": 1.5}, "finetune.layer_decay"),
        ({"strategy": "freeze", "unfreeze_at_epoch": 3}, "finetune.unfreeze_at_epoch"),
    ],
)
def test_plan_rejects_bad_values(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        FinetunePlan(**kwargs)


def test_auto_must_be_resolved_before_apply() -> None:
    with pytest.raises(ValueError, match="auto"):
        apply_strategy(backbone("test_resnet"), FinetunePlan(strategy="auto"))


@pytest.mark.parametrize("quadrant", sorted(QUADRANT_STRATEGIES))
def test_choose_strategy_over_matrix(quadrant: str) -> None:
    expected = {"small_similar": "freeze", "small_different": "partial", "large_similar": "full",
                "large_different": "full"}
    assert choose_strategy(quadrant) == expected[quadrant]


def test_choose_strategy_unknown_quadrant() -> None:
    with pytest.raises(ValueError, match="quadrant='tiny'"):
        choose_strategy("tiny")


@pytest.mark.parametrize("strategy", ["freeze", "partial", "full", "auto"])
def test_config_files_hold_exactly_the_plan(strategy: str) -> None:
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "conf" / "finetune" / f"{strategy}.yaml"
    plan = FinetunePlan(**OmegaConf.to_container(OmegaConf.load(path)))
    assert plan.strategy == strategy


def _unfreeze_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Train with a gradual unfreeze under DDP, with and without syncing the late-unfrozen grads."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from transferkit.tasks.finetune import sync_untracked_grads, tracked_param_ids
    from transferkit.tasks.optim import build_optimizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for sync in (True, False):
        torch.manual_seed(rank)  # different init per rank: DDP's broadcast must make them equal
        encoder = timm.create_model("test_resnet", pretrained=False, num_classes=0)
        net = nn.ModuleDict({"encoder": encoder, "head": nn.Linear(encoder.num_features, 2)})
        plan = FinetunePlan(strategy="partial", trainable_stages=1, unfreeze_at_epoch=1)
        apply_strategy(net["encoder"], plan, epoch=0)
        ddp = DistributedDataParallel(_Forward(net))
        tracked = tracked_param_ids(net)
        opt = build_optimizer(build_param_groups(net["encoder"], net["head"], plan, 0.0), name="sgd", lr=0.5)
        start = torch.cat([p.detach().flatten() for p in net["encoder"].layer4.parameters()]).clone()
        gen = torch.Generator().manual_seed(100 + rank)  # different data per rank
        for epoch in range(2):
            apply_strategy(net["encoder"], plan, epoch=epoch)
            ddp.train()
            keep_frozen_norms_eval(net["encoder"])
            for _ in range(2):
                x, y = torch.randn(2, 3, 32, 32, generator=gen), torch.randint(0, 2, (2,), generator=gen)
                loss = nn.functional.cross_entropy(ddp(x), y)
                opt.zero_grad()
                loss.backward()
                if sync:
                    sync_untracked_grads(net, tracked)
                opt.step()
        results[sync] = {"layer4": torch.cat([p.detach().flatten() for p in net["encoder"].layer4.parameters()]),
                         "start": start, "stem": net["encoder"].conv1[0].weight.detach().clone(),
                         "requires_grad": sorted(trainable(net["encoder"]))}
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


class _Forward(nn.Module):
    def __init__(self, net: nn.ModuleDict) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net["head"](self.net["encoder"](x))


@pytest.mark.slow
def test_gradual_unfreeze_under_ddp_keeps_ranks_equal(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_unfreeze_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    synced = [r[True] for r in ranks]
    assert torch.equal(synced[0]["start"], synced[1]["start"])  # DDP broadcast the frozen stage too
    assert not torch.equal(synced[0]["layer4"], synced[0]["start"])  # it was unfrozen and trained
    assert torch.allclose(synced[0]["layer4"], synced[1]["layer4"], atol=1e-6)
    assert torch.equal(synced[0]["stem"], synced[1]["stem"])
    assert {n.split(".")[0] for n in synced[0]["requires_grad"]} == {"layer4"}
    unsynced = [r[False] for r in ranks]
    assert not torch.allclose(unsynced[0]["layer4"], unsynced[1]["layer4"], atol=1e-4)  # the bug, reproduced


@pytest.mark.slow
def test_resume_after_unfreeze_keeps_requires_grad_and_lrs(image_folder, fast, tmp_path) -> None:
    from transferkit.cli.app import compose_config
    from transferkit.planning.plan import plan_run
    from transferkit.training.session import train_and_test

    common = [f"data.root={image_folder}", *fast, "finetune=partial", "finetune.trainable_stages=1",
              "finetune.unfreeze_at_epoch=1", "scheduler=step", "scheduler.interval=epoch",
              "scheduler.step_size=1", "scheduler.gamma=0.5", "optimizer.lr=0.001",
              "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
    first, *_ = train_and_test(*plan_run(compose_config([*common, "trainer.max_epochs=2"]), "fit"))
    saved = torch.load(first["last_checkpoint"], weights_only=True)  # resume reads it so too
    assert saved["epoch"] == 1 and len(saved["optimizer_states"][0]["state"]) > 4  # layer4 trained in epoch 1
    cfg = compose_config([*common, "trainer.max_epochs=3", f"ckpt_path={first['last_checkpoint']}",
                          f"run_dir={tmp_path / 'resumed'}"])
    _, trainer, task, *_ = train_and_test(*plan_run(cfg, "fit"))
    assert trainer.current_epoch == 3
    assert {n.split(".")[0] for n in trainable(task.encoder)} == {"layer4"}
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs["head"] == pytest.approx(1e-3 * 0.5**3)  # three epoch steps, two before the resume
    assert lrs["backbone.4"] == pytest.approx(1e-4 * 0.5**3)
