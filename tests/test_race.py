"""`finetune=auto`: the race's schedule, elimination, memory, carry-over, cost and DDP agreement."""

from __future__ import annotations

import gc
import json
import re
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import fit_two_process_ddp
from transferkit.cli import app as cli
from transferkit.runtime.checkpoint_io import AtomicCheckpointIO
from transferkit.training.race import legs as racing
from transferkit.planning.plan import plan_spec
from transferkit.planning.race import build_candidates, plan_race, rung_schedule, schedule_cost, scratch_enters
from transferkit.training.race.rules import Rung, choose_survivors, leg_score

COSTS = [0.05, 0.7, 1.0, 1.0, 1.0]  # freeze, lpft-partial, full-llrd, lpft-full, scratch


@pytest.mark.parametrize("epochs", [3, 4, 5, 6, 10, 15, 30, 100])
def test_worst_case_cost_is_at_most_twice_one_full_run(epochs):
    rungs = rung_schedule(epochs, len(COSTS))
    assert rungs[-1] == Rung(epochs, 1) and [r.end for r in rungs] == sorted({r.end for r in rungs})
    assert schedule_cost(rungs, COSTS) <= 2 * epochs


def test_schedule_cuts_five_to_two_to_one():
    assert rung_schedule(15, 5) == [Rung(2, 2), Rung(5, 1), Rung(15, 1)]
    assert rung_schedule(15, 1) == [Rung(15, 1)]  # one candidate: a plain run


def test_survivors_by_accuracy_then_loss_and_ties_go_to_the_cheaper_plan():
    scores = {"freeze": (0.90, 0.30), "lpft-partial": (0.92, 0.20), "full-llrd": (0.80, 0.50), "lpft-full": (0.95, 0.10)}
    assert choose_survivors(scores, 2, val_size=1000) == ["lpft-full", "lpft-partial"]
    tie = {"lpft-full": (0.95, 0.100), "freeze": (0.95, 0.105)}  # losses within 0.01: the cheaper plan
    assert choose_survivors(tie, 1, val_size=1000) == ["freeze"]
    # Near chance, a calibrated uninformative model has the lower loss; a clear accuracy gap on 500
    # validation images still decides, but on 10 images it is noise and the loss decides.
    near_chance = {"scratch": (0.28, 1.38), "lpft-partial": (0.38, 1.60)}
    assert choose_survivors(near_chance, 1, val_size=500) == ["lpft-partial"]
    assert choose_survivors(near_chance, 1, val_size=10) == ["scratch"]
    assert leg_score([0.9, 0.4, 0.2], [0.5, 0.7, 0.9]) == pytest.approx((0.8, 0.3))  # the last two evaluations


@pytest.mark.parametrize("advice, enters", [
    ({"similarity": 0.98, "logme_gain": 0.7}, False),  # features already separate the classes
    ({"similarity": 0.98, "logme_gain": -0.1}, True),  # no better than random features
    ({"similarity": 0.60, "logme_gain": 0.7}, True),   # frozen features leave a lot to learn
    (None, True),
])
def test_scratch_enters_unless_negative_transfer_is_ruled_out(advice, enters):
    assert scratch_enters(advice)[0] is enters


def test_free_candidates_wait_for_the_finisher(monkeypatch, tmp_path):
    legs = {n: SimpleNamespace(candidate=SimpleNamespace(free=n == "freeze"), entry=SimpleNamespace(score=lambda v=v: v),
                               trainer=SimpleNamespace(strategy=SimpleNamespace(broadcast=lambda o, src=0: o)))
            for n, v in {"freeze": (0.99, 0.05), "lpft-full": (0.90, 0.30), "scratch": (0.50, 0.90)}.items()}
    monkeypatch.setattr(racing, "release", lambda leg: None)
    racing.cut(legs, {n: l for n, l in legs.items() if not l.candidate.free}, Rung(1, 1), 1, val_size=100)
    assert set(legs) == {"freeze", "lpft-full"}  # the cut left freeze alone
    racing.cut(legs, legs, Rung(9, 1), 1, val_size=100)
    assert set(legs) == {"freeze"}


def test_explicit_keys_bind_every_candidate():
    plan = plan_race({"strategy": "auto", "trainable_stages": 2, "backbone_lr_scale": 0.05, "layer_decay": None,
                      "unfreeze_at_epoch": None, "cache_features": None}, {"similarity": 0.5, "logme_gain": 1},
                     max_epochs=9)
    names = [c.name for c in plan.candidates]
    assert names == ["freeze", "lpft-partial", "full-llrd", "lpft-full", "scratch"]
    assert all(c.finetune["backbone_lr_scale"] == 0.05 for c in plan.candidates)
    assert plan.scratch["explicit_keys"] == ["backbone_lr_scale"] and plan.cost_bound <= 2
    assert [c.name for c in build_candidates({}, use_weights=False, with_scratch=True)] == ["scratch"]


def fake_training(scores: dict[str, list[float]]):
    """A train_leg that reads each candidate's validation losses from `scores`, one per rung."""
    broadcaster = SimpleNamespace(strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj), global_rank=0)

    def train_leg(leg, rung, probe_features=None):
        loss = scores[leg.candidate.name][len(leg.entry.rungs)]
        leg.trainer = broadcaster
        leg.entry.rungs.append({"epochs": rung.end, "val_loss": loss, "val_acc": 1 - loss,
                                "score_acc": 1 - loss, "score_loss": loss})
    return train_leg


def test_race_keeps_the_best_and_releases_the_eliminated(monkeypatch, image_folder, fast, tmp_path):
    from transferkit.training.builders import build_datamodule

    spec = plan_spec(cli.compose_config([f"data.root={image_folder}", *fast, "trainer.max_epochs=9"]), "fit")
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    datamodule.scan()
    candidates = build_candidates({}, use_weights=True, with_scratch=True)
    scores = {"freeze": [0.5, 0.5, 0.5], "lpft-partial": [0.3, 0.25, 0.2], "full-llrd": [0.6], "lpft-full": [0.2, 0.3, 0.1],
              "scratch": [0.9]}
    monkeypatch.setattr(racing, "train_leg", fake_training(scores))
    watched: dict[str, weakref.ref] = {}
    real_release = racing.release

    def release(leg):
        watched[leg.candidate.name] = weakref.ref(leg.task)
        real_release(leg)
    monkeypatch.setattr(racing, "release", release)
    rungs = rung_schedule(9, len(candidates))
    winner, entries = racing.run_race(spec, candidates, rungs, datamodule, tmp_path)
    # lpft-partial beat lpft-full at the second cut (0.25 < 0.30), finished the schedule and then beat
    # freeze, which is never cut (it costs nothing) and meets the finisher at the end.
    assert winner.candidate.name == "lpft-partial"
    assert [len(e.rungs) for e in entries] == [3, 3, 1, 2, 1]
    gc.collect()
    assert set(watched) == {"freeze", "full-llrd", "scratch", "lpft-full"}
    assert all(ref() is None for ref in watched.values())  # nothing keeps an eliminated model alive


@pytest.mark.slow
def test_auto_race_continues_the_winner_and_records_it(image_folder, fast, tmp_path, caplog, monkeypatch):
    caplog.set_level("INFO", logger="transferkit")
    # On 12 random images any plan may win; make lpft-full win so that it runs every leg.
    monkeypatch.setattr(racing, "choose_survivors",
                        lambda scores, keep, val_size: sorted(scores, key="lpft-full".__ne__)[:keep])
    saved: list[Path] = []
    real_save = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint",
                        lambda self, checkpoint, path, *args, **kwargs: (
                            saved.append(Path(path)), real_save(self, checkpoint, path, *args, **kwargs)))
    results = cli.run(["fit", f"data.root={image_folder}", *fast[:-1], "finetune=auto", "trainer.max_epochs=3",
                       "augment=none", f"run_dir={tmp_path / 'auto'}"])
    auto = results["auto"]
    winner = next(c for c in auto["candidates"] if c["name"] == auto["winner"])
    assert [r["epochs"] for r in winner["rungs"]] == [r["end"] for r in auto["rungs"]][:len(winner["rungs"])]
    assert winner["rungs"][-1]["epochs"] == 3 and all(c["seconds"] > 0 for c in auto["candidates"])
    assert auto["seconds"] == pytest.approx(sum(c["seconds"] for c in auto["candidates"]), abs=0.05)
    last = torch.load(results["last_checkpoint"], map_location="cpu", weights_only=False)
    batches = -(-results["data"]["train_size"] // 4)
    assert last["epoch"] == 2 and last["global_step"] == 3 * batches  # one schedule, no restart
    assert auto["winner"] == "lpft-full" and results["linear_probe"]["then"] == "full"
    assert results["strategy"] == winner["strategy"] and "race (val loss / val acc" in caplog.text
    assert not (tmp_path / "auto" / "race" / "scratch" / "checkpoints").exists() or auto["winner"] == "scratch"
    # last.ckpt once per early leg (where the next leg resumes), after every epoch of the finishing
    # leg (epochs 2 and 3 here); freeze trains one one-epoch leg.
    legs = {c["name"]: 1 if c["name"] == "freeze" else sum(1 if r["epochs"] < 3 else 2 for r in c["rungs"])
            for c in auto["candidates"]}
    assert {name: saved.count(tmp_path / "auto" / "race" / name / "checkpoints" / "last.ckpt")
            for name in legs} == legs
    # The LP-FT winner started from the head the freeze candidate solved on the same features, and
    # the weights file was read once for the measurement and once for all pretrained candidates.
    assert results["linear_probe"]["reused"] and results["linear_probe"]["seconds"] == 0
    assert len(re.findall(r"Loaded \d+ tensors from", caplog.text)) == 2


@pytest.mark.slow
def test_two_process_ddp_agrees_on_the_winner(image_folder, tmp_path, test_resnet_weights):
    proc = fit_two_process_ddp(image_folder, test_resnet_weights, tmp_path, "finetune=auto", "trainer.max_epochs=3",
                               f"run_dir={tmp_path / 'ddp'}", timeout=600)
    said = sorted(line.split("race: ")[1] for line in proc.stderr.splitlines() if "race: rank" in line)
    assert len(said) == 2 and said[0].split()[-1] == said[1].split()[-1], said
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert said[0].endswith(results["auto"]["winner"])


class TinyTask(pl.LightningModule):
    """A linear model on shuffled random data: its training depends on torch's random stream."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.validations = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x + 0.1 * torch.randn_like(x)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.cross_entropy(self.layer(x), y))

    def on_validation_epoch_end(self) -> None:
        self.validations += 0 if self.trainer.sanity_checking else 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=torch.Generator().manual_seed(0)),
                                              torch.arange(32) % 2)
        return torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)

    def val_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.ones(8, 4), torch.arange(8) % 2)
        return torch.utils.data.DataLoader(data, batch_size=4)


@pytest.mark.parametrize("first", [0, 3])
def test_a_leg_validates_only_its_scored_epochs_and_trains_the_same(first):
    def fit(callbacks):
        pl.seed_everything(0, verbose=False)
        task = TinyTask()
        pl.Trainer(max_epochs=5, callbacks=callbacks, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(task)
        return task, torch.randn(1).item()  # the random stream after training

    plain, after_plain = fit([])
    scored, after_scored = fit([racing.ScoredEpochsOnly(first)])
    assert plain.validations == 5 and scored.validations == 5 - first
    assert torch.equal(plain.layer.weight, scored.layer.weight) and after_plain == after_scored


def spec_of(*overrides: str):
    return plan_spec(cli.compose_config(list(overrides)), "fit", load_weights=False)


def test_only_non_final_legs_skip_validations():
    spec = spec_of("trainer.max_epochs=15", "data.num_workers=0")
    assert [c.first for c in racing.validated_epochs_callbacks(spec, 5, 15)] == [3]
    assert racing.validated_epochs_callbacks(spec, 15, 15) == []  # the finisher validates every epoch
    steered = spec_of("trainer.max_epochs=15", "data.num_workers=0", "early_stopping.patience=3")
    assert racing.validated_epochs_callbacks(steered, 5, 15) == []
    for workers in ("2", "auto"):
        loaders = spec_of("trainer.max_epochs=15", f"data.num_workers={workers}")
        assert racing.validated_epochs_callbacks(loaders, 5, 15) == []
