"""What the console shows while a command runs: transferkit's lines and one progress display.

`quiet_console` hides Lightning's advertisement and banner chatter and third-party
deprecation warnings for the duration of a command; `progress_callbacks` swaps the progress
bar for one log line per epoch when stdout is not interactive (CI logs, SLURM, a pipe).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import pytorch_lightning as pl

log = logging.getLogger(__name__)

# Lightning's rank_zero_info() logs through these (lightning_utilities.core.rank_zero.log is
# reassigned to the first one when pytorch_lightning is imported).
LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")

# timm's INFO lines while it loads weights ("Loaded  from checkpoint ..."); transferkit reports the load.
TIMM_INFO_LOGGERS = ("timm.models._builder", "timm.models._helpers", "timm.models._hub")

# INFO lines of Lightning that tell a transferkit user nothing; the GPU line stays.
HIDDEN_LIGHTNING_LINES = (
    re.compile(r".*\bLitLogger\b"),  # "💡 Tip: ... try installing [litlogger] to enable LitLogger ..."
    re.compile(r"TPU available: False"),
    re.compile(r"Loading `train_dataloader` to estimate number of stepping batches"),
)

# UserWarnings (mostly Lightning's PossibleUserWarning) about choices transferkit makes on purpose.
NOISY_WARNINGS = (
    r".*does not have many workers",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r".*module\(s\) in eval mode",  # frozen BatchNorm layers stay in eval mode (see finetune)
    r"Experiment logs directory .* exists and is not empty",  # CSV logs share the run directory
    r"Checkpoint directory .* exists and is not empty",  # a race leg continues in its own directory
)

OWN_MODULES = r"transferkit(\.|$)"


class LightningChatterFilter(logging.Filter):
    """Drop Lightning's INFO lines listed in HIDDEN_LIGHTNING_LINES; keep everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        if record.name.startswith("timm."):
            return False
        message = record.getMessage()
        return not any(pattern.match(message) for pattern in HIDDEN_LIGHTNING_LINES)


def hide_library_warnings() -> None:
    """Add the warning filters of a quiet console (call inside `warnings.catch_warnings()`)."""
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
        # Inserted later, so checked first: transferkit's own deprecations stay visible.
        warnings.filterwarnings("default", category=category, module=OWN_MODULES)
    for message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


@contextmanager
def quiet_console(debug: bool) -> Iterator[None]:
    """While a command runs, hide Lightning's chatter and third-party warnings unless `debug`.

    Hidden: Lightning's LitLogger "Tip" and "TPU available: False" lines, DeprecationWarning and
    FutureWarning raised from outside transferkit, and the UserWarnings in NOISY_WARNINGS.
    The "transferkit" loggers are never touched. A `-W`/PYTHONWARNINGS option given to Python
    wins over the warning part. On exit, warning filters and logger filters are restored.
    """
    if debug:
        yield
        return
    chatter = LightningChatterFilter()
    loggers = [logging.getLogger(name) for name in (*LIGHTNING_INFO_LOGGERS, *TIMM_INFO_LOGGERS)]
    for logger in loggers:
        logger.addFilter(chatter)
    try:
        with warnings.catch_warnings():
            if not sys.warnoptions:
                hide_library_warnings()
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(chatter)


def in_jupyter_kernel() -> bool:
    """True inside a running Jupyter (ipykernel) kernel, where progress bars render as widgets."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def is_interactive(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default: the current sys.stdout) is a terminal or a Jupyter kernel's output."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return tty or in_jupyter_kernel()


def progress_callbacks(interactive: bool, enable_progress_bar: bool | None) -> tuple[list[pl.Callback], dict]:
    """Callbacks to add and Trainer kwargs for the progress display.

    `enable_progress_bar` is the user's `trainer.enable_progress_bar`:
      None:  automatic. A terminal or notebook gets Lightning's bar; anything else (a pipe,
             a CI or SLURM log) gets one `EpochLogLine` per epoch instead of bar frames.
      True:  the bar, even in a pipe.
      False: no bar; one `EpochLogLine` per epoch still reports progress (a silent run of
             many minutes looks hung). To hide those lines too, raise the log level of
             "transferkit.training.console".

    Returns:
        (callbacks, {"enable_progress_bar": bool}) to pass on to `pl.Trainer`.
    """
    bar = interactive if enable_progress_bar is None else bool(enable_progress_bar)
    callbacks: list[pl.Callback] = [] if bar else [EpochLogLine()]
    return callbacks, {"enable_progress_bar": bar}


def epoch_line(epoch: int, max_epochs: int | None, metrics: dict[str, float], seconds: float) -> str:
    """`epoch 3/10: train/loss 0.4210, val/acc 0.8800 (12.3 s)`; without `/n` when open-ended."""
    of = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    values = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    return f"epoch {epoch}{of}: {values} ({seconds:.1f} s)" if values else f"epoch {epoch}{of} ({seconds:.1f} s)"


def epoch_metrics(callback_metrics: dict, validated: bool) -> dict[str, float]:
    """train/* epoch values (not per-step ones), then val/* when validation ran this epoch."""
    train, val = {}, {}
    # "_epoch" keys last: for a metric logged on_step and on_epoch, its epoch value wins.
    for key in sorted(callback_metrics, key=lambda k: k.endswith("_epoch")):
        if key.startswith("train/") and not key.endswith("_step"):
            train[key.removesuffix("_epoch")] = float(callback_metrics[key])
        elif key.startswith("val/") and validated:
            val[key] = float(callback_metrics[key])
    return {**dict(sorted(train.items())), **dict(sorted(val.items()))}


class EpochLogLine(pl.Callback):
    """Log one line per training epoch: epoch i/n, train metrics, this epoch's val metrics, seconds.

    Written at the end of the training epoch, which Lightning calls after the epoch's validation,
    so the line carries both; epochs without validation show train metrics only. Rank zero only.
    """

    def __init__(self) -> None:
        self.started = 0.0
        self.validated = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.monotonic()
        self.validated = False

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = epoch_metrics(trainer.callback_metrics, self.validated)
        log.info("%s", epoch_line(trainer.current_epoch + 1, trainer.max_epochs, metrics,
                                  time.monotonic() - self.started))


def metrics_table(metrics: dict[str, float], first: list[str] | None = None) -> str:
    width = max((len(k) for k in metrics), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    order = [k for k in first or [] if k in metrics] + sorted(k for k in metrics if k not in (first or []))
    lines += [f"{k:<{width}}  {metrics[k]:.4f}" for k in order]
    return "\n".join(lines)
