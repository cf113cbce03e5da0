"""Read ``.ckpt`` / ``.pt`` / ``.pth`` files without running code: ``torch.load(weights_only=True)``.

A pickle may name any Python callable and have it called while it is read (``os.system``, ``open``).
PyTorch's weights-only unpickler allows tensors and plain containers only; transferkit checkpoints
hold nothing else (tested), so no extra globals are allow-listed. Whatever is refused, or is not a
checkpoint at all, becomes one line that names the file and the config key it came from.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from transferkit.errors import ConfigError

# Types a transferkit checkpoint may hold beyond torch's default allow-list. Measured empty: tasks
# save plain hparams, LambdaLR keeps closures out of its state (schedulers.py). Add a type here only
# if it cannot run code when unpickled.
SAFE_GLOBALS: tuple[Any, ...] = ()
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_MARK = 0x80


class CheckpointError(ConfigError):
    """A file given as a checkpoint or weights is not one that can be read (empty, truncated, text)."""


class UnsafeCheckpointError(CheckpointError):
    """Reading the file would run code: it was not loaded."""


def unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The callables a refused pickle asks for (read without unpickling), else those torch names."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: fall back to torch's message
        names = []
    return names or sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))


def first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


def unreadable(path: Path, key: str, hint: str, error: Exception) -> CheckpointError:
    """What is wrong with a file torch could not read, judged from its first bytes."""
    with path.open("rb") as handle:
        head = handle.read(16)
    size = path.stat().st_size
    if head.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(path):
        what = f"is truncated or corrupt (an incomplete zip archive of {size} bytes; copy it again?)"
    elif head.startswith(ZIP_MAGIC):
        what = f"is a zip archive but not a PyTorch checkpoint ({first_line(error)})"
    elif head[:1] == bytes([PICKLE_PROTOCOL_MARK]):
        what = f"is a pickle that could not be read as a checkpoint ({first_line(error)})"
    else:
        what = f"is not a PyTorch checkpoint (it starts with {head[:12]!r})"
    return CheckpointError(f"{key}={str(path)!r} {what}; {hint}.")


def read_torch_file(path: Path | str, key: str = "ckpt_path",
                    hint: str = "pass a checkpoint written by fit (<run_dir>/checkpoints/*.ckpt)") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors.

    Args:
        key: the config key that named the file, for the messages.
        hint: what to pass instead, for the messages.

    Raises:
        UnsafeCheckpointError: the file asks for code to run while it is read; nothing was run.
        CheckpointError: a folder, an empty, truncated or foreign file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"{key}={str(path)!r} is a folder, not a file; {hint}.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{key}={str(path)!r} is empty (0 bytes), e.g. an interrupted copy "
                              f"or save; {hint}.")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        names = unsafe_globals(path, error)
        asks = (f"it asks for {', '.join(names[:5])}, which would run code while the file is read"
                if names else "it holds pickled objects beyond tensors and plain data, and reading "
                "them could run code")
        raise UnsafeCheckpointError(
            f"{key}={str(path)!r} was not loaded: {asks}. transferkit loads only tensors and plain "
            f"data (torch.load weights_only=True); {hint}.") from error
    except Exception as error:  # noqa: BLE001 - any other failure: say what the file is instead
        raise unreadable(path, key, hint, error) from error
