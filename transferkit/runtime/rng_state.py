"""The random state a resumed run needs to continue exactly, saved in every checkpoint.

torch (CPU and CUDA), numpy and python's global generators drive shuffling, dropout and weight
noise; the training augmentation (`TorchSeededCompose`) keeps its own generator; samplers with
`set_epoch` draw from the epoch. Everything is stored as tensors and plain Python values, so a
checkpoint still loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from transferkit.data.transforms import TorchSeededCompose

log = logging.getLogger(__name__)


def capture_global_rng() -> dict:
    """torch, CUDA (when in use), numpy and python generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_loaders(trainer: pl.Trainer) -> list:
    """The training DataLoaders of a running fit (one, or a collection of them)."""
    loaders = trainer.train_dataloader
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def augmentations(trainer: pl.Trainer) -> Iterator[TorchSeededCompose]:
    for loader in train_loaders(trainer):
        transform = getattr(getattr(loader, "dataset", None), "transform", None)
        if isinstance(transform, TorchSeededCompose):
            yield transform


def samplers(trainer: pl.Trainer) -> Iterator:
    for loader in train_loaders(trainer):
        for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                yield sampler


def capture_augmentation(compose: TorchSeededCompose) -> dict | None:
    """The augmentation generator's state in this process, or None before its first draw."""
    if compose.seeded_pid != os.getpid():
        return None
    return {"numpy": compose.random_generator.bit_generator.state, "python": compose.py_random.getstate()}


def restore_augmentation(compose: TorchSeededCompose, state: dict) -> None:
    generator = np.random.default_rng()
    generator.bit_generator.state = state["numpy"]
    py_random = random.Random()
    py_random.setstate(state["python"])
    compose.set_random_state(generator, py_random)
    compose.seeded_pid = os.getpid()  # continue this stream instead of reseeding from torch


class RngStateCallback(pl.Callback):
    """Saves the random state with every checkpoint and puts it back when a fit resumes.

    The global generators are restored as soon as Lightning restores callbacks (before the loaders
    are iterated); the augmentation generator and the sampler epoch once the loaders exist
    (`on_train_start`, before the first batch is drawn). With `data.num_workers > 0` each worker
    process seeds its own augmentation stream, which a resumed run cannot continue exactly.
    """

    def __init__(self) -> None:
        self.trainer: pl.Trainer | None = None
        self.pending: dict | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict:
        state = {"global": capture_global_rng()}
        if self.trainer is None or threading.current_thread() is not threading.main_thread():
            return state
        state["augment"] = [capture_augmentation(c) for c in augmentations(self.trainer)]
        epochs = [int(s.epoch) for s in samplers(self.trainer) if hasattr(s, "epoch")]
        loop = self.trainer.fit_loop.epoch_loop.batch_progress
        state["sampler_epoch"] = epochs[0] + int(loop.is_last_batch) if epochs else None
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if self.trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return  # test(ckpt_path=...) restores callbacks too; only a resumed fit continues the stream
        restore_global_rng(state_dict["global"])
        self.pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self.pending = self.pending, None
        if state is None:
            return
        composes, saved = list(augmentations(trainer)), state.get("augment") or []
        for compose, aug in zip(composes, saved):
            if aug is not None:
                restore_augmentation(compose, aug)
        if len(saved) != len(composes) or None in saved:
            log.info("Augmentation drawn in loader workers (or not saved): its random stream starts afresh, "
                     "so this resumed run is a valid continuation but not a bit-identical one.")
        if state.get("sampler_epoch") is not None:
            for sampler in samplers(trainer):
                sampler.set_epoch(state["sampler_epoch"])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a measurement without touching training's random streams (torch, numpy, python)."""
    import numpy as np
    import torch

    states = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        yield
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
