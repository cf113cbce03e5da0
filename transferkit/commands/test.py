"""`python -m transferkit test ckpt_path=... [tta=flip|multiscale]`: evaluate on the test split.

`ckpt_path` may name several checkpoints (`ckpt_path=[a,b,c]`) or a run directory (a cv run: its
folds): their softmax outputs (segmentation: per-pixel probabilities) are averaged, each member
preparing images its own way. The model and its input format come from the checkpoint, the data and
trainer from the config (that of the checkpoint's run, with this command line on top).
"""

from __future__ import annotations

import time

from omegaconf import DictConfig

from transferkit.planning.checkpoint import plan_checkpoint_test
from transferkit.training.evaluate import test_checkpoints


def run(cfg: DictConfig) -> dict:
    start = time.time()
    spec, checkpoints, model = plan_checkpoint_test(cfg)
    return test_checkpoints(spec, checkpoints, model, start)
