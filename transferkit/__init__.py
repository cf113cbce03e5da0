"""transferkit: transfer learning for images on PyTorch Lightning and timm.

From Python, each command is a function (`transferkit.fit`, `transferkit.predict`, `transferkit.cv`, ...;
see `transferkit.api`) that returns a `Run`, and `transferkit.load` reopens a run directory or checkpoint.
Importing transferkit stays light: torch, Lightning and Hydra load on the first call.

Example:
    >>> import numpy as np, transferkit
    >>> run = transferkit.fit("small_similar", trainer={"max_epochs": 2})           # doctest: +SKIP
    >>> transferkit.load(run.dir).predict([np.zeros((32, 32), np.uint8)], top_k=3)  # doctest: +SKIP
"""

__version__ = "0.1.0"

# Names importable from transferkit without importing transferkit.api (and torch) up front.
ERRORS = {"ConfigError": "transferkit.errors", "RunStopped": "transferkit.runtime.guards", "RunInterrupted": "transferkit.runtime.guards",
          "RunDiverged": "transferkit.runtime.guards", "DiskFullError": "transferkit.runtime.disk",
          "NotWritableError": "transferkit.runtime.disk"}


def __getattr__(name: str):
    import importlib

    if name in ERRORS:
        return getattr(importlib.import_module(ERRORS[name]), name)
    if not name.startswith("_"):
        api = importlib.import_module("transferkit.api")
        if name in api.__all__:
            return getattr(api, name)
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    import importlib

    return sorted({*globals(), *ERRORS, *importlib.import_module("transferkit.api").__all__})
