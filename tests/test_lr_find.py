"""`lr-find` and `optimizer.lr=find`: Lightning's LR range test, with the param groups' multipliers kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.planning.plan import plan_spec
from transferkit.tasks.loading import read_checkpoint
from transferkit.search.lr_finder import check_searchable, group_lr_scales_kept

SEARCH = ["lr_find.num_training=16", "lr_find.early_stop_threshold=null", "lr_find.min_lr=1e-4"]


def test_each_group_steps_at_the_swept_lr_times_its_scale_during_the_search():
    head, backbone = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [head], "lr": 1.0, "lr_scale": 1.0},
                                 {"params": [backbone], "lr": 1.0, "lr_scale": 0.1}], lr=1.0)
    head.grad, backbone.grad = torch.ones(1), torch.ones(1)
    with group_lr_scales_kept():
        optimizer.step()
    assert head.item() == pytest.approx(-1.0) and backbone.item() == pytest.approx(-0.1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1.0, 1.0])  # the finder's values back
    optimizer.step()  # outside the search nothing is rescaled
    assert backbone.item() == pytest.approx(-1.1)


@pytest.mark.parametrize("overrides,message", [
    (["finetune=freeze"], "head_solver=lbfgs solves the head without any LR"),
    (["finetune=auto"], "finetune=auto races several strategies"),
    (["finetune=full", "trainer.devices=2", "trainer.strategy=ddp"], "with several processes each would search"),
])
def test_fit_with_lr_find_refuses_runs_the_found_lr_would_not_drive(overrides, message):
    spec = plan_spec(cli.compose_config(["optimizer.lr=find", *overrides]), "fit", load_weights=False)
    with pytest.raises(ConfigError, match=message):
        check_searchable(spec, "fit")


@pytest.mark.slow
def test_lr_find_writes_plot_and_suggestion(image_folder, fast):
    results = cli.run(["lr-find", f"data.root={image_folder}", *fast, "finetune=partial", *SEARCH])
    run_dir = Path(results["run_dir"])
    saved = json.loads((run_dir / "results.json").read_text())
    assert 1e-4 <= saved["suggested_lr"] <= 1.0 and saved["steps"] == 16
    assert (run_dir / "lr_find.png").stat().st_size > 0 and (run_dir / "lr_find.csv").is_file()
    assert saved["fit_command"].startswith("python -m transferkit fit ")
    assert saved["fit_command"].endswith(f"optimizer.lr={saved['suggested_lr']:.3g}")


@pytest.mark.slow
def test_lr_find_on_a_solved_head_searches_the_sgd_head(image_folder, fast):
    results = cli.run(["lr-find", f"data.root={image_folder}", *fast, "finetune=freeze", *SEARCH])
    assert results["suggested_lr"] > 0 and "finetune.head_solver=sgd" in results["fit_command"]


def group_lrs(checkpoint: str) -> list[tuple[float, float]]:
    groups = read_checkpoint(checkpoint)["optimizer_states"][0]["param_groups"]
    return [(g["lr"], g["lr_scale"]) for g in groups]


@pytest.mark.slow
def test_fit_with_lr_find_trains_at_the_suggestion_and_keeps_the_groups_multipliers(image_folder, fast, tmp_path):
    layered = [f"data.root={image_folder}", *fast, "finetune=full", "finetune.backbone_lr_scale=0.2",
               "finetune.layer_decay=0.5", "scheduler=constant"]
    found = cli.run(["fit", *layered, "optimizer.lr=find", *SEARCH])
    lr = found["lr_find"]["suggested_lr"]
    assert Path(found["lr_find"]["plot"]).is_file()
    assert f"lr: {lr}" in (Path(found["run_dir"]) / "config.yaml").read_text()  # re-runs with the number
    plain = cli.run(["fit", *layered[:-1], "scheduler=constant", "optimizer.lr=0.01", f"run_dir={tmp_path / 'plain'}"])
    with_find, without = group_lrs(found["last_checkpoint"]), group_lrs(plain["last_checkpoint"])
    assert len(with_find) == len(without) > 2 and len({s for _, s in with_find}) > 2
    assert [g for g, _ in with_find] == pytest.approx([lr * s for _, s in with_find])
    head = with_find[0][0], without[0][0]
    assert [g / head[0] for g, _ in with_find] == pytest.approx([g / head[1] for g, _ in without])
