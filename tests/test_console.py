"""What the console shows: Lightning chatter and library warnings hidden, one line per epoch in a pipe."""

from __future__ import annotations

import io
import logging
import sys
import types
import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.training.console import (LIGHTNING_INFO_LOGGERS, EpochLogLine, is_interactive, progress_callbacks,
                                 quiet_console)

TIP = "💡 Tip: try installing [litlogger](https://pypi.org/project/litlogger/) to enable LitLogger."


@pytest.fixture
def lightning_propagates(monkeypatch):
    """Lightning adds its own handler and stops propagation when imported before logging is set up."""
    monkeypatch.setattr(logging.getLogger("pytorch_lightning"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("lightning_fabric"), "propagate", True)


def emit_tip_and_warnings() -> None:
    logging.getLogger(LIGHTNING_INFO_LOGGERS[0]).info(TIP)
    logging.getLogger(LIGHTNING_INFO_LOGGERS[0]).info("GPU available: False, used: False")
    warnings.warn_explicit("old api", DeprecationWarning, "somelib/api.py", 1, module="somelib.api")
    warnings.warn_explicit("old torch", FutureWarning, "torch/x.py", 1, module="torch.x")
    warnings.warn_explicit("our key is deprecated", DeprecationWarning, "transferkit/x.py", 1,
                           module="transferkit.training.builders")
    logging.getLogger("transferkit.training.builders").warning("data.root has 1 image")


def test_quiet_console_hides_tip_and_library_warnings(caplog, recwarn, lightning_propagates):
    with caplog.at_level(logging.INFO), quiet_console(debug=False):
        emit_tip_and_warnings()
    lines = [r.getMessage() for r in caplog.records]
    assert TIP not in lines
    assert "GPU available: False, used: False" in lines
    assert "data.root has 1 image" in lines
    assert [str(w.message) for w in recwarn] == ["our key is deprecated"]


def test_quiet_console_hides_the_tip_of_a_real_trainer(caplog, tmp_path, lightning_propagates):
    with caplog.at_level(logging.INFO), quiet_console(debug=False):
        pl.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    assert not any("LitLogger" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage().startswith("GPU available") for r in caplog.records)


def test_debug_shows_everything(caplog, recwarn, lightning_propagates):
    with caplog.at_level(logging.INFO), quiet_console(debug=True):
        emit_tip_and_warnings()
    assert TIP in [r.getMessage() for r in caplog.records]
    assert len(recwarn) == 3


def console_state() -> tuple:
    loggers = [logging.getLogger(n) for n in (*LIGHTNING_INFO_LOGGERS, "transferkit", "pytorch_lightning")]
    return (list(warnings.filters), warnings.showwarning,
            [(lg.filters[:], lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers])


@pytest.mark.parametrize("debug", [False, True])
def test_quiet_console_restores_state_even_after_an_error(debug):
    before = console_state()
    with pytest.raises(RuntimeError), quiet_console(debug):
        assert debug or console_state() != before
        raise RuntimeError("boom")
    assert console_state() == before


class TinyTask(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 4, generator=generator), torch.randint(0, 2, (8,), generator=generator))
    return DataLoader(data, batch_size=2)


def fit_tiny(tmp_path, **trainer_kwargs) -> None:
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[EpochLogLine()], **trainer_kwargs)
    trainer.fit(TinyTask(), train_dataloaders=loader(), val_dataloaders=loader())


def test_epoch_log_line_once_per_epoch_with_val_metrics(caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="transferkit.training.console"):
        fit_tiny(tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "transferkit.training.console"]
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2: train/loss ") and lines[1].startswith("epoch 2/2: ")
    assert all("val/acc" in line and "val/loss" in line and line.endswith(" s)") for line in lines)
    assert "_step" not in lines[0]


def test_epoch_log_line_leaves_out_val_when_validation_skipped(caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="transferkit.training.console"):
        fit_tiny(tmp_path, check_val_every_n_epoch=2)
    first, second = [r.getMessage() for r in caplog.records if r.name == "transferkit.training.console"]
    assert "train/loss" in first and "val/" not in first
    assert "val/acc" in second


@pytest.mark.parametrize(("interactive", "flag", "bar"), [
    (True, None, True), (False, None, False), (False, True, True), (True, False, False)])
def test_progress_callbacks(interactive, flag, bar):
    callbacks, kwargs = progress_callbacks(interactive, flag)
    assert kwargs == {"enable_progress_bar": bar}
    assert [type(c) for c in callbacks] == ([] if bar else [EpochLogLine])


def test_is_interactive(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert not is_interactive(io.StringIO())
    assert is_interactive(Terminal())
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert is_interactive(io.StringIO())
