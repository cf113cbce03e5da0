"""A cv run, planned: the checks of `cv`, and each fold's spec on its own scanned split.

The cv config is planned once (`plan_spec`: model, weights, input format). Each fold then scans its
own split (`data.fold=k`) and plans its fine-tuning on it, as a fit run does; a fold interrupted in
an earlier session continues from its own config.yaml (`transferkit.planning.resume`).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from transferkit.errors import ConfigError
from transferkit.planning.multilabel import plan_label_kind
from transferkit.planning.plan import plan_run, plan_training, search_lr
from transferkit.planning.resume import config_of_resumed_fold
from transferkit.planning.spec import RunSpec
from transferkit.search.lr_finder import wants_search
from transferkit.training.builders import build_datamodule


def check_cv(cfg: DictConfig) -> int:
    """The number of folds; the config must ask for a cross-validation this command can run."""
    if cfg.task.kind not in ("classification", "multilabel"):
        raise ConfigError(f"cv splits classification data into stratified folds; task.kind={cfg.task.kind!r} "
                          "has no folds. Use fit, and test/predict with ckpt_path=[...] for an ensemble.")
    folds = cfg.data.get("num_folds")
    if folds is None or int(folds) < 2:
        raise ConfigError(f"data.num_folds={folds!r}: cv needs 2 or more folds, e.g. "
                          "python -m transferkit cv recipe=small_similar data.num_folds=5.")
    if cfg.data.get("fold") is not None:
        raise ConfigError(f"data.fold={cfg.data.fold!r} picks one fold for a fit run; cv trains every fold. "
                          "Drop data.fold (or run fit data.num_folds=... data.fold=...).")
    if cfg.get("ckpt_path"):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r}: cv trains each fold from the start; to continue an "
                          "interrupted cv run use python -m transferkit cv resume=<its run directory>.")
    return int(folds)


def plan_fold(cfg: DictConfig, spec: RunSpec, fold: int, fold_dir: Path, action: str) -> tuple[RunSpec, object]:
    """Fold `fold`'s fit run and its scanned datamodule. `spec` is the cv run's (planned once); a fold
    that `resume`s continues from its own config.yaml with this session's RESUME_KEYS."""
    if action == "resume":
        return plan_run(config_of_resumed_fold(cfg, fold_dir), "fit")
    pl.seed_everything(spec.seed, workers=True, verbose=False)  # every fold starts from the run's seed
    fold_spec = spec.for_fold(fold, str(fold_dir))
    datamodule = build_datamodule(fold_spec.data, fold_spec.model.input.in_chans)
    datamodule.scan()
    fold_spec = plan_training(plan_label_kind(fold_spec, datamodule), datamodule)
    if wants_search(fold_spec.optimizer):
        fold_spec = search_lr(fold_spec, datamodule)
    return fold_spec, datamodule
