"""The checkpoint callback's own state, saved relative to its folder, so that a run directory that was moved
(or copied to another machine) resumes with its best score and best checkpoint, writing only where it is now.

Lightning's `ModelCheckpoint` saves its folder and best paths as absolute paths, and on restore keeps
only `best_model_path` when the folder changed: a moved run would forget its best score (a worse model
could replace best.ckpt) and test a best.ckpt at the old place. `RunCheckpoint` saves the paths relative
to its folder and reads them (or an older checkpoint's absolute ones) as paths in the folder it has now.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

HERE = "."
PATH_FIELDS = ("best_model_path", "kth_best_model_path", "last_model_path")


class RunCheckpoint(ModelCheckpoint):
    """A `ModelCheckpoint` whose saved state names its files relative to its folder (same state key)."""

    @property
    def state_key(self) -> str:  # the plain ModelCheckpoint's key: checkpoints of either class restore the other
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__):]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        return {**state, "dirpath": HERE, **{key: self.relative(state[key]) for key in PATH_FIELDS},
                "best_k_models": {self.relative(k): v for k, v in state["best_k_models"].items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = str(state_dict.get("dirpath") or HERE)
        state = {**state_dict, "dirpath": self.dirpath,
                 **{key: self.placed(state_dict.get(key) or "", saved) for key in PATH_FIELDS},
                 "best_k_models": {self.placed(k, saved): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
        best = state["best_model_path"]
        if best and not Path(best).is_file():
            # From another run's folder (fit ckpt_path=...): its best file is not here, so this run keeps
            # its own best from scratch rather than naming a file it does not have.
            log.info("The checkpoint's best model %s is not in %s: the best score starts afresh.", best, self.dirpath)
            return
        super().load_state_dict(state)

    def relative(self, value: str) -> str:
        if not value or self.dirpath is None:
            return value
        path, base = Path(value), Path(self.dirpath)
        return path.relative_to(base).as_posix() if path.is_absolute() and base in path.parents else value

    def placed(self, value: str, saved: str) -> str:
        """A saved path as a file of this callback's folder: relative ones (this class) under it, absolute
        ones under the folder the state was saved from (an older checkpoint, or a moved run) re-rooted."""
        if not value or self.dirpath is None:
            return value
        path, base, old = Path(value), Path(self.dirpath), Path(saved)
        if not path.is_absolute():
            return str(base / path)
        if old.is_absolute() and old in path.parents:
            return str(base / path.relative_to(old))
        return value
