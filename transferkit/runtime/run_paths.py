"""Paths a run directory records of its own files, written relative to it, so that a directory copied or
moved elsewhere (another machine, another folder) still finds its checkpoints.

A record (results.json, config.yaml, the spec in spec.json and in checkpoints) keeps the run's own
files under RUN_PATH_KEYS as paths relative to the run directory (`checkpoints/best.ckpt`; the
directory itself is `.`); paths outside it (the data, the weights) stay as they were given. Reading a
record gives absolute paths again, under where the directory is now; a record written before this
(absolute paths) is re-rooted from the directory it names (`run_dir`) to where it is now.
Plain values only: no torch, no Lightning (`transferkit.load` reads results without them).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

# The keys whose values (a path, or a list of paths) may name the run's own files.
RUN_PATH_KEYS = frozenset({"run_dir", "resume", "ckpt_path", "best_checkpoint", "last_checkpoint", "checkpoint",
                           "members", "plot", "race"})
HERE = "."
UP = 2  # how far up a record may name its run (a race leg's folder is two below it)


def relative_to_run(value: str, run_dir: Path) -> str:
    """`value` relative to `run_dir` when it lies inside it (`.` for the directory itself), else absolute
    (a relative `value` as the working directory saw it: read back, a relative path is the run's)."""
    path = Path(os.path.abspath(Path(value).expanduser()))
    base = Path(os.path.abspath(run_dir))
    if path == base:
        return HERE
    if base in path.parents:
        return PurePosixPath(*path.relative_to(base).parts).as_posix()
    if path in base.parents[:UP]:  # a race leg's folder (<run>/race/<name>) names its run as ../..
        return "/".join([".."] * (base.parents.index(path) + 1))
    return str(value) if Path(value).is_absolute() else str(path)  # read back, relative means the run's


def portable(record, run_dir: Path):
    """`record` (nested dicts and lists) with every RUN_PATH_KEYS value inside `run_dir` made relative to it."""
    return convert(record, lambda value: relative_to_run(value, run_dir))


def located(record, run_dir: Path, recorded: str | None = None):
    """`record` as written by `portable` (or before it, with absolute paths) with its RUN_PATH_KEYS paths
    absolute under `run_dir`, where the directory is now. `recorded`: the directory an old record names
    as its own (its `run_dir`), whose paths move along with it."""
    base = Path(os.path.abspath(run_dir))
    old = Path(recorded) if recorded and Path(recorded).is_absolute() and Path(recorded) != base else None

    def place(value: str) -> str:
        path = Path(value)
        if not path.is_absolute():
            return os.path.normpath(base / path)
        if old is not None and (path == old or old in path.parents):
            return str(base / path.relative_to(old))
        return value

    return convert(record, place)


def read_located(record: dict, run_dir: Path) -> dict:
    """A run record read from `run_dir`: its own paths absolute where the directory is now."""
    recorded = record.get("run_dir") if isinstance(record, dict) else None
    return located(record, run_dir, recorded if isinstance(recorded, str) else None)


def convert(record, change, key: str | None = None):
    if isinstance(record, dict):
        return {k: convert(v, change, k) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [convert(v, change, key) for v in record]
    if key in RUN_PATH_KEYS and isinstance(record, (str, os.PathLike)) and str(record):
        return change(str(record))
    return record
