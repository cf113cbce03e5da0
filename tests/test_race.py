"""`finetune=auto`: the race's schedule, elimination, memory, carry-over, cost and DDP agreement."""

from __future__ import annotations

import gc
import json
import math
import re
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import fit_two_process_ddp
from transferkit.cli import app as cli
from transferkit.evaluation.reports.run_report import load_test_outputs
from transferkit.runtime.checkpoint_io import AtomicCheckpointIO
from transferkit.planning import race as race_plan
from transferkit.training.race import ensemble as race_ensemble
from transferkit.training.race import legs as racing
from transferkit.planning.plan import plan_spec
from transferkit.planning.race import (COST_BOUND, budget_schedule, build_candidates, choose_field, plan_race,
                                      schedule_cost, scratch_enters)
from transferkit.training.race.rules import Rung, Score, Verdict, choose_survivors, score_outputs

COSTS = [0.05, 0.7, 1.0, 1.0, 1.0]  # freeze, lpft-partial, full-llrd, lpft-full, scratch


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 5, 6, 9, 10, 15, 30, 100])
@pytest.mark.parametrize("scratch", [True, False])
def test_worst_case_cost_is_at_most_two_and_a_half_full_runs(epochs, scratch):
    plan = plan_race({}, {"similarity": 0.5 if scratch else 0.99, "logme_gain": 1.0}, epochs)
    assert plan.rungs == [Rung(epochs, 2)]  # the field all finishes: no cut
    assert schedule_cost(plan.rungs, [c.cost for c in plan.candidates]) <= COST_BOUND * epochs
    assert plan.cost_bound == pytest.approx(2.05)
    # Fields that could not all finish (every candidate; all but scratch) get a cut that keeps the bound
    # from 2 epochs on.
    for costs in (COSTS, COSTS[:4]):
        rungs = budget_schedule(epochs, costs)
        assert rungs[-1].end == epochs and [r.end for r in rungs] == sorted({r.end for r in rungs})
        assert schedule_cost(rungs, costs) <= COST_BOUND * epochs or epochs == 1


def test_the_field_is_as_large_as_can_all_finish_within_the_bound():
    with_scratch = plan_race({}, {"similarity": 0.5, "logme_gain": 1.0}, 15)
    assert [c.name for c in with_scratch.candidates] == ["freeze", "full-llrd", "scratch"]
    assert with_scratch.left_out == ("lpft-partial", "lpft-full") and with_scratch.to_dict()["left_out"]
    ruled_out = plan_race({}, {"similarity": 0.99, "logme_gain": 1.0}, 15)  # negative transfer ruled out
    assert [c.name for c in ruled_out.candidates] == ["freeze", "full-llrd", "lpft-full"]
    field, left_out = choose_field(build_candidates({}, use_weights=True, with_scratch=False), bound=3.0)
    assert [c.name for c in field] == ["freeze", "lpft-partial", "full-llrd", "lpft-full"] and left_out == []


def test_one_cut_as_late_as_the_bound_allows():
    # 4 paid candidates (0.7 + 3 x 1.0) all train to epoch 8 (3.75 x 8 = 30 epochs), the best one
    # finishes (7 more): 37 <= 2.5 x 15; a cut at 9 would cost 39.75.
    assert budget_schedule(15, COSTS) == [Rung(8, 1), Rung(15, 1)]  # a field of all five could not finish
    assert budget_schedule(15, COSTS[:4]) == [Rung(12, 1), Rung(15, 1)]  # without scratch: later still
    assert budget_schedule(15, [0.05, 1.0]) == [Rung(15, 1)]  # one paid candidate: a plain run
    assert budget_schedule(15, [0.05, 1.0, 1.0]) == [Rung(15, 2)]  # 2.05 x: both finish
    assert budget_schedule(1, COSTS) == [Rung(1, 1)]


def predictions(correct: int, n: int = 100, wrong_first: bool = False) -> dict:
    """A validation's record: `correct` of `n` two-class images right (the first or the last ones wrong)."""
    label = [i % 2 for i in range(n)]
    right = [i >= n - correct for i in range(n)] if wrong_first else [i < correct for i in range(n)]
    return {"pred": [y if ok else 1 - y for y, ok in zip(label, right)], "label": label}


def test_a_leg_is_scored_on_the_runs_metric_with_a_bootstrap_se():
    score = score_outputs([predictions(80)], "val/acc")
    assert score.value == pytest.approx(0.8)
    assert score.se == pytest.approx((0.8 * 0.2 / 100) ** 0.5, rel=0.15)  # the binomial SE, by resampling
    assert score_outputs([predictions(10), predictions(70), predictions(90)]).value == pytest.approx(0.8)  # last two
    with pytest.raises(ValueError, match="val/auroc"):
        score_outputs([predictions(80)], "val/auroc")


def test_balanced_accuracy_weighs_every_class_alike():
    record = {"pred": [0] * 10, "label": [0] * 8 + [1] * 2}  # always the majority class
    assert score_outputs([record], "val/acc").value == pytest.approx(0.8)
    assert score_outputs([record], "val/balanced_acc").value == pytest.approx(0.5)


def test_a_difference_on_the_same_images_has_its_own_smaller_se():
    a, b = score_outputs([predictions(80)]), score_outputs([predictions(78)])  # 78 of a's 80 right images
    assert a.se_of_difference(b) < 0.5 * math.hypot(a.se, b.se)
    apart = score_outputs([predictions(78, wrong_first=True)])  # the same accuracy on other images
    assert a.se_of_difference(apart) > 2 * a.se_of_difference(b)


def test_survivors_by_score_ties_to_the_cheaper_plan_and_every_verdict_says_why():
    scores = {"freeze": Score(0.90, None, 0.03), "lpft-partial": Score(0.92, None, 0.03),
              "full-llrd": Score(0.80, None, 0.04), "lpft-full": Score(0.95, None, 0.02)}
    verdicts = {v.name: v for v in choose_survivors(scores, 2)}
    assert [n for n, v in verdicts.items() if v.kept] == ["lpft-full", "lpft-partial"]
    cut = verdicts["full-llrd"]
    assert not cut.kept and cut.behind == pytest.approx(0.15) and cut.se_behind == pytest.approx(math.hypot(0.04, 0.02))
    assert "cut: rank 4 of 4, keep 2; 0.150 behind lpft-full (3.4 paired SE)" == cut.why
    assert cut.to_dict()["se"] == 0.04
    tie = {"lpft-full": Score(0.95, None, 0.02), "freeze": Score(0.95, None, 0.02)}
    assert [v.name for v in choose_survivors(tie, 1) if v.kept] == ["freeze"]


@pytest.mark.parametrize("advice, enters", [
    ({"similarity": 0.98, "logme_gain": 0.7}, False),  # features already separate the classes
    ({"similarity": 0.98, "logme_gain": -0.1}, True),  # no better than random features
    ({"similarity": 0.60, "logme_gain": 0.7}, True),   # frozen features leave a lot to learn
    (None, True),
])
def test_scratch_enters_unless_negative_transfer_is_ruled_out(advice, enters):
    assert scratch_enters(advice)[0] is enters


def test_free_candidates_wait_for_the_finisher(monkeypatch, tmp_path):
    legs = {n: SimpleNamespace(candidate=SimpleNamespace(free=n == "freeze"),
                               entry=SimpleNamespace(rungs=[{"outputs": [predictions(v)]}]),
                               trainer=SimpleNamespace(strategy=SimpleNamespace(broadcast=lambda o, src=0: o)))
            for n, v in {"freeze": 99, "lpft-full": 90, "scratch": 50}.items()}
    monkeypatch.setattr(racing, "release", lambda leg, keep_checkpoints=False: None)
    racing.cut(legs, {n: l for n, l in legs.items() if not l.candidate.free}, Rung(1, 1), 1, val_size=100)
    assert set(legs) == {"freeze", "lpft-full"}  # the cut left freeze alone
    assert legs["lpft-full"].entry.rungs[-1]["verdict"]["kept"] and "verdict" not in legs["freeze"].entry.rungs[-1]
    racing.cut(legs, legs, Rung(9, 1), 1, val_size=100)
    assert set(legs) == {"freeze"}


def test_explicit_keys_bind_every_candidate():
    plan = plan_race({"strategy": "auto", "trainable_stages": 2, "backbone_lr_scale": 0.05, "layer_decay": None,
                      "unfreeze_at_epoch": None, "cache_features": None}, {"similarity": 0.5, "logme_gain": 1},
                     max_epochs=9)
    names = [c.name for c in plan.candidates]
    assert names == ["freeze", "full-llrd", "scratch"]
    assert all(c.finetune["backbone_lr_scale"] == 0.05 for c in plan.candidates)
    assert plan.scratch["explicit_keys"] == ["backbone_lr_scale"] and plan.cost_bound <= COST_BOUND
    assert [c.name for c in build_candidates({}, use_weights=False, with_scratch=True)] == ["scratch"]


def fake_training(scores: dict[str, list[int]]):
    """A train_leg that reads each candidate's validation images right (of 100) from `scores`, one per rung."""
    broadcaster = SimpleNamespace(strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj), global_rank=0)

    def train_leg(leg, rung, probe_features=None):
        right = scores[leg.candidate.name][len(leg.entry.rungs)]
        leg.trainer = broadcaster
        leg.entry.rungs.append({"epochs": rung.end, "val_loss": 1.0, "val_acc": right / 100,
                                "outputs": [predictions(right)], "accs": [right / 100]})
    return train_leg


def test_race_keeps_the_best_and_releases_the_eliminated(monkeypatch, image_folder, fast, tmp_path):
    from transferkit.training.builders import build_datamodule

    spec = plan_spec(cli.compose_config([f"data.root={image_folder}", *fast, "trainer.max_epochs=9"]), "fit")
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    datamodule.scan()
    candidates = build_candidates({}, use_weights=True, with_scratch=True)
    scores = {"freeze": [50, 50], "lpft-partial": [75, 80], "full-llrd": [40], "lpft-full": [70], "scratch": [10]}
    monkeypatch.setattr(racing, "train_leg", fake_training(scores))
    watched: dict[str, weakref.ref] = {}
    real_release = racing.release

    def release(leg, keep_checkpoints=False):
        watched[leg.candidate.name] = weakref.ref(leg.task)
        real_release(leg, keep_checkpoints)
    monkeypatch.setattr(racing, "release", release)
    rungs = budget_schedule(9, [c.cost for c in candidates])
    assert rungs == [Rung(4, 1), Rung(9, 1)]
    winner, entries = racing.run_race(spec, candidates, rungs, datamodule, tmp_path)
    # lpft-partial beat lpft-full at the cut (0.75 > 0.70), finished the schedule and then beat
    # freeze, which is never cut (it costs nothing) and meets the finisher at the end.
    assert winner.candidate.name == "lpft-partial"
    assert [len(e.rungs) for e in entries] == [2, 2, 1, 1, 1]
    assert [e.rungs[0]["verdict"]["kept"] for e in entries[1:]] == [True, False, False, False]
    gc.collect()
    assert set(watched) == {"freeze", "full-llrd", "scratch", "lpft-full"}
    assert all(ref() is None for ref in watched.values())  # nothing keeps an eliminated model alive


@pytest.mark.slow
def test_auto_race_continues_the_winner_and_records_it(image_folder, fast, tmp_path, caplog, monkeypatch):
    caplog.set_level("INFO", logger="transferkit")
    # The field without scratch (freeze, full-llrd, lpft-full); on 12 random images any plan may win:
    # make lpft-full win.
    monkeypatch.setattr(race_plan, "scratch_enters", lambda advice: (False, "test"))
    monkeypatch.setattr(racing, "choose_survivors", lambda scores, keep: [
        Verdict(n, i < keep, 0.0, 0.0, 0.0, 0.0, "test") for i, n in enumerate(sorted(scores, key="lpft-full".__ne__))])
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
    assert last["epoch"] == 2 and last["global_step"] == 3 * batches  # the weights carry on through the legs
    assert auto["winner"] == "lpft-full" and results["linear_probe"]["then"] == "full"
    assert results["strategy"] == winner["strategy"] and "race (val/acc ± bootstrap SE" in caplog.text
    assert not (tmp_path / "auto" / "race" / "scratch" / "checkpoints").exists() or auto["winner"] == "scratch"
    # last.ckpt once per early leg (where the next leg resumes), after every epoch of a leg that
    # finishes the schedule; freeze trains one one-epoch leg. (This field all finishes: one leg each.)
    assert auto["rungs"] == [{"end": 3, "keep": 2}] and auto["left_out"] == ["lpft-partial"]
    legs = {c["name"]: 1 if c["name"] == "freeze" else sum(
        1 if r["epochs"] < 3 else r["epochs"] - ([0] + [q["epochs"] for q in c["rungs"]])[k]
        for k, r in enumerate(c["rungs"])) for c in auto["candidates"]}
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


def test_a_rung_is_scored_from_its_predictions_or_else_its_accuracies():
    scored = racing.entry_score({"outputs": [predictions(70), predictions(90)], "accs": [0.7, 0.9]}, "val/acc", 100)
    assert scored.value == pytest.approx(0.8) and scored.replicates is not None
    plain = racing.entry_score({"accs": [0.7, 0.9]}, "val/acc", 100)  # a task without a head to hook
    assert plain.value == pytest.approx(0.8) and plain.se == pytest.approx((0.8 * 0.2 / 100) ** 0.5)
    older = racing.entry_score({"score_acc": 0.75, "score_loss": 0.4}, "val/acc", 100)  # race/progress.json of
    assert older.value == 0.75  # a race an earlier transferkit started


@pytest.mark.slow
def test_each_candidate_trains_as_that_plan_would_alone(image_folder, fast, tmp_path, monkeypatch):
    """A candidate's random init, shuffles and augmentations do not depend on the candidates built
    or trained before it: the race's full-llrd and scratch end where the fixed runs at the same seed
    end (the race's scratch once drew another init than the fixed scratch run: issue 22's
    sources-large row)."""
    monkeypatch.setattr(race_plan, "scratch_enters", lambda advice: (True, "test"))
    common = [f"data.root={image_folder}", *fast[:-1], "trainer.max_epochs=2", "seed=7"]
    auto = cli.run(["fit", *common, "finetune=auto", f"run_dir={tmp_path / 'auto'}"])["auto"]
    raced = {c["name"]: c["rungs"][-1]["val_loss"] for c in auto["candidates"]}
    alone = {
        "full-llrd": ["finetune=full", "finetune.backbone_lr_scale=1.0", "finetune.layer_decay=0.75"],
        "scratch": ["finetune=full", "finetune.backbone_lr_scale=1.0", "model.weights=none"],
    }
    for name, overrides in alone.items():
        fixed = cli.run(["fit", *common, *overrides, f"run_dir={tmp_path / name}"])
        assert raced[name] == pytest.approx(fixed["metrics"]["val/loss"], rel=1e-6), name


@pytest.mark.slow
def test_the_runs_model_is_the_ensemble_of_the_finishers(image_folder, fast, tmp_path, monkeypatch):
    """finetune.combine=ensemble (the default): every candidate that finished is a member, the run's test
    metrics are the ensemble's (what `test ckpt_path=<run dir>` measures), the winner alone stays
    checkpoints/best.ckpt with its metrics under auto.winner_metrics; combine=best keeps the winner only."""
    monkeypatch.setattr(race_plan, "scratch_enters", lambda advice: (False, "test"))
    monkeypatch.setattr(race_ensemble, "WITHIN_SE", math.inf)  # on 12 random images: every finisher joins
    common = [f"data.root={image_folder}", *fast[:-1], "finetune=auto", "trainer.max_epochs=2"]
    run = tmp_path / "auto"
    results = cli.run(["fit", *common, f"run_dir={run}"])
    auto = results["auto"]
    assert auto["combine"] == "ensemble" and auto["ensemble"] == [c["name"] for c in auto["candidates"]]
    assert not any((run / "race" / c["name"] / "checkpoints").exists() for c in auto["candidates"]
                   if c["name"] not in auto["ensemble"])
    record = json.loads((run / "checkpoints" / "ensemble.json").read_text())
    assert [Path(p).name for p in record["members"]] == [f"{n}.ckpt" for n in auto["ensemble"]]
    assert not any((run / "race" / n / "checkpoints").exists() for n in auto["ensemble"] if n != auto["winner"])
    assert set(results["calibration"]["temperatures"]) == set(auto["ensemble"])
    assert [Path(p) for p in results["ensemble"]["members"]] == [run / p for p in record["members"]]
    tested = cli.run(["test", f"ckpt_path={run}", f"data.root={image_folder}", *fast[:-1],
                      f"run_dir={tmp_path / 'test'}"])["metrics"]
    assert tested["test/acc"] == pytest.approx(results["metrics"]["test/acc"])
    assert tested["test/loss"] == pytest.approx(results["metrics"]["test/loss"], rel=1e-5)
    single = cli.run(["test", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"data.root={image_folder}",
                      *fast[:-1], f"run_dir={tmp_path / 'single'}"])["metrics"]
    assert single["test/loss"] == pytest.approx(auto["winner_metrics"]["test/loss"], rel=1e-5)
    assert single["test/loss"] != pytest.approx(tested["test/loss"], rel=1e-5)
    # report.html shows the run's model: its saved test outputs are the ensemble's, as `test` of the run dir saves them
    saved, again = load_test_outputs(run), load_test_outputs(tmp_path / "test")
    assert torch.allclose(torch.as_tensor(saved["logits"]), torch.as_tensor(again["logits"]), atol=1e-5)
    nll = torch.nn.functional.cross_entropy(torch.as_tensor(saved["logits"]), torch.as_tensor(saved["targets"]))
    assert float(nll) == pytest.approx(results["metrics"]["test/loss"], rel=1e-4)
    with pytest.raises(Exception, match="is an ensemble .*export writes one network"):
        cli.run(["export", f"ckpt_path={run}"])
    best = cli.run(["fit", *common, "finetune.combine=best", f"run_dir={tmp_path / 'best'}"])
    assert "ensemble" not in best["auto"] and not (tmp_path / "best" / "checkpoints" / "ensemble.json").exists()
    assert best["metrics"]["test/acc"] == pytest.approx(results["auto"]["winner_metrics"]["test/acc"])


def test_combine_is_checked_before_anything_trains():
    with pytest.raises(Exception, match=r"finetune.combine='vote' is not one of ensemble \| best"):
        plan_race({"strategy": "auto", "combine": "vote"}, None, 3)


@pytest.mark.parametrize("verdict, member", [
    (None, False), ({"behind": 0.0, "se_behind": 0.0}, True), ({"behind": 0.05, "se_behind": 0.03}, True),
    ({"behind": 0.07, "se_behind": 0.03}, False), ({"behind": 0.05, "se_behind": 0.0}, False)])
def test_a_finisher_joins_the_ensemble_when_validation_cannot_tell_it_from_the_winner(verdict, member):
    assert race_ensemble.is_member("b", "a", verdict) is member
    assert race_ensemble.is_member("a", "a", verdict)
