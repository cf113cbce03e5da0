"""`python -m transferkit cv recipe=... data.num_folds=5`: stratified k-fold cross-validation.

One model per fold, trained on train+val with fold k as its validation split (`data.fold=k`); the
held-out test split is never touched by the folds. Each fold is a fit run of its own in
`<run_dir>/folds/<k>/`; the cv run writes `cv.csv` and `results.json` (the folds' mean and std, and
the ensemble of their best checkpoints on the test split). `cv resume=<run directory>` skips the
folds that finished and resumes an interrupted one (see `transferkit.training.cv`).
"""

from __future__ import annotations

from functools import partial

from omegaconf import DictConfig, OmegaConf

from transferkit.planning.cv import check_cv, plan_fold
from transferkit.planning.plan import plan_spec
from transferkit.training.cv import run_cv


def run(cfg: DictConfig) -> dict:
    num_folds = check_cv(cfg)
    spec = plan_spec(cfg, "fit")  # every fold is a fit run; each scans and plans on its own split
    config = OmegaConf.to_container(cfg, resolve=True)
    return run_cv(spec, config, num_folds, cfg.get("tta", "none"), partial(plan_fold, cfg, spec))
