"""`python -m transferkit lr-find recipe=... data.root=...`: Lightning's LR range test on the planned run.

Writes `lr_find.png` (smoothed loss vs base LR), `lr_find.csv` and `results.json` (`suggested_lr`,
`fit_command`) into a new run directory, and logs the `fit` command that trains with the suggestion.
With `finetune=freeze` and `finetune.head_solver=lbfgs` (the default) the head is solved without an
LR, so the search is for the SGD head (`finetune.head_solver=sgd`), and the command says so.
"""

from __future__ import annotations

import csv
import logging
import shlex
import sys
import time

from omegaconf import DictConfig, open_dict

from transferkit.training.builders import build_datamodule, container
from transferkit.search.lr_finder import check_searchable, find_lr, plot_lr_search, solved_head
from transferkit.planning.plan import plan_model, plan_training
from transferkit.runtime.rng_state import preserved_rng
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")


def fit_command(cfg: DictConfig, lr: float, extra: list[str]) -> str:
    """The command line that trains with the suggestion: this command's own overrides when it was run
    from the shell, else the recipe and data."""
    argv = sys.argv[1:] if sys.argv[1:2] == ["lr-find"] else []
    given = [a for a in argv[1:] if a.split("=", 1)[0].lstrip("+") not in ("run_dir", "optimizer.lr")
             and not a.startswith("lr_find.")]
    if not argv:
        given = [f"recipe={cfg.recipe}"] if cfg.get("recipe") else []
        given += [f"data.root={cfg.data.root}"] if cfg.data.get("root") else []
    words = ["python", "-m", "transferkit", "fit", *given, *[e for e in extra if e not in given], f"optimizer.lr={lr:.3g}"]
    return " ".join(shlex.quote(w) for w in words)


def run(cfg: DictConfig) -> dict:
    start = time.time()
    check_searchable(cfg, "lr-find")
    plan = plan_model(cfg)
    extra = []
    if solved_head(container(cfg.finetune)):
        log.info("finetune=freeze solves its head with L-BFGS (finetune.head_solver=lbfgs), which has no LR: "
                 "searching the LR of the SGD head (finetune.head_solver=sgd) instead.")
        with open_dict(plan.cfg):
            plan.cfg.finetune.head_solver = "sgd"
        extra.append("finetune.head_solver=sgd")
    datamodule = build_datamodule(plan.cfg)
    datamodule.scan()
    cfg = plan_training(plan, datamodule).cfg
    run_dir = create_run_dir(cfg.run_dir)
    write_config(cfg, run_dir)
    log.info("Run directory: %s", run_dir)
    with preserved_rng():
        search = find_lr(cfg, datamodule, plan.weights)
    title = f"{cfg.model.backbone} / {cfg.finetune.strategy} / {cfg.optimizer.name}"
    png = plot_lr_search(search, run_dir / "lr_find.png", title)
    with (run_dir / "lr_find.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "lr", "smoothed_loss"])
        writer.writerows([i, f"{lr:.6g}", f"{loss:.6g}"] for i, (lr, loss) in enumerate(zip(search.lrs, search.losses)))
    command = fit_command(cfg, search.suggestion, extra)
    results = {"command": "lr-find", "status": "completed", **search.to_dict(), "fit_command": command,
               "plot": str(png), "csv": str(run_dir / "lr_find.csv"), "strategy": cfg.finetune.strategy,
               "recipe": cfg.get("recipe"), "run_dir": str(run_dir), "wall_seconds": round(time.time() - start, 2)}
    write_json(results, run_dir / "results.json")
    log.info("Suggested LR %.3g (plot: %s). Train with it:\n  %s", search.suggestion, png, command)
    return results
