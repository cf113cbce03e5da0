"""`python -m transferkit lr-find recipe=... data.root=...`: Lightning's LR range test on the planned run.

Writes `lr_find.png` (smoothed loss vs base LR), `lr_find.csv` and `results.json` (`suggested_lr`,
`fit_command`) into a new run directory, and logs the `fit` command that trains with the suggestion.
With `finetune=freeze` and `finetune.head_solver=lbfgs` (the default) the head is solved without an
LR, so the search is for the SGD head (`finetune.head_solver=sgd`), and the command says so.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import replace

from omegaconf import DictConfig

from transferkit.evaluation.reports.lr_plot import plot_lr_search, write_lr_search_csv
from transferkit.planning.plan import plan_spec, plan_training
from transferkit.planning.spec import RunSpec
from transferkit.runtime.rng_state import preserved_rng
from transferkit.search.lr_finder import check_searchable, find_lr, solved_head
from transferkit.training.builders import build_datamodule
from transferkit.training.rundir import create_run_dir, write_config, write_json

log = logging.getLogger("transferkit")
SGD_HEAD = "finetune.head_solver=sgd"


def fit_command(spec: RunSpec, lr: float, extra: list[str]) -> str:
    """The command line that trains with the suggestion: this command's own overrides when it was run
    from the shell, else the recipe and data."""
    argv = sys.argv[1:] if sys.argv[1:2] == ["lr-find"] else []
    given = [a for a in argv[1:] if a.split("=", 1)[0].lstrip("+") not in ("run_dir", "optimizer.lr")
             and not a.startswith("lr_find.")]
    if not argv:
        given = [f"recipe={spec.recipe}"] if spec.recipe else []
        given += [f"data.root={spec.data.root}"] if spec.data.root else []
    words = ["python", "-m", "transferkit", "fit", *given, *[e for e in extra if e not in given], f"optimizer.lr={lr:.3g}"]
    return " ".join(shlex.quote(w) for w in words)


def searched(spec: RunSpec) -> tuple[RunSpec, list[str]]:
    """The run whose LR the search is for: a head solved by L-BFGS has none, so the SGD head's; and the
    override that says so."""
    if not solved_head(spec.finetune.options):
        return spec, []
    log.info("finetune=freeze solves its head with L-BFGS (finetune.head_solver=lbfgs), which has no LR: "
             "searching the LR of the SGD head (finetune.head_solver=sgd) instead.")
    finetune = {**spec.finetune.options, "head_solver": "sgd"}
    return replace(spec, finetune=replace(spec.finetune, options=finetune),
                   config={**spec.config, "finetune": finetune}), [SGD_HEAD]


def run(cfg: DictConfig) -> dict:
    start = time.time()
    spec = plan_spec(cfg, "lr-find")
    check_searchable(spec, "lr-find")
    spec, extra = searched(spec)
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    datamodule.scan()
    spec = plan_training(spec, datamodule)
    run_dir = create_run_dir(spec.outputs.run_dir)
    write_config(spec.config, run_dir)
    log.info("Run directory: %s", run_dir)
    with preserved_rng():
        search = find_lr(spec, datamodule)
    title = f"{spec.model.backbone} / {spec.finetune.strategy} / {spec.optimizer.get('name')}"
    png = plot_lr_search(search, run_dir / "lr_find.png", title)
    table = write_lr_search_csv(search, run_dir / "lr_find.csv")
    command = fit_command(spec, search.suggestion, extra)
    results = {"command": "lr-find", "status": "completed", **search.to_dict(), "fit_command": command,
               "plot": str(png), "csv": str(table), "strategy": spec.finetune.strategy,
               "recipe": spec.recipe, "run_dir": str(run_dir), "wall_seconds": round(time.time() - start, 2)}
    write_json(results, run_dir / "results.json")
    log.info("Suggested LR %.3g (plot: %s). Train with it:\n  %s", search.suggestion, png, command)
    return results
