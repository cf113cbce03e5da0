"""`tune`: the search space in config, pruning, a resumable SQLite study, a best recipe that re-runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from omegaconf import OmegaConf

from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.search.pruning import PruneOnValidation
from transferkit.search.space import parse_space, sample, trial_overrides


def test_recipe_may_be_a_file(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("# @package _global_\ndefaults:\n  - override /finetune: partial\noptimizer:\n  lr: 0.123\n")
    cfg = cli.compose_config([f"recipe={recipe}"])
    assert cfg.finetune.strategy == "partial" and cfg.optimizer.lr == 0.123 and cfg.recipe == str(recipe)
    with pytest.raises(cli.UsageError, match="no such file"):
        cli.compose_config([f"recipe={tmp_path / 'missing.yaml'}"])


def space_of(*overrides: str):
    config = OmegaConf.to_container(cli.compose_config(["recipe=small_similar", *overrides]), resolve=True)
    return config, parse_space(config["tune"]["space"], config)


def test_space_declared_in_config_is_sampled_into_overrides_that_compose():
    cfg, params = space_of()
    assert {p.path for p in params} == {"optimizer.lr", "optimizer.weight_decay", "finetune",
                                        "finetune.trainable_stages", "augment", "augment.mixup_alpha",
                                        "task.label_smoothing"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = sample(study.ask(), params)
    assert 1e-4 <= values["optimizer.lr"] <= 0.1 and values["finetune"] in ("freeze", "partial", "full")
    assert isinstance(values["finetune.trainable_stages"], int)
    base = ["recipe=small_similar", "finetune=full", "optimizer.lr=5", "data.batch_size=8", "tune.n_trials=3", "run_dir=x"]
    overrides = trial_overrides(base, params, values)
    # the space wins over the command line's own value of a searched key; the search's keys stay out
    assert "finetune=full" not in overrides and "optimizer.lr=5" not in overrides and "run_dir=x" not in overrides
    trial = cli.compose_config(overrides)
    assert trial.finetune.strategy == values["finetune"] and trial.augment.name == values["augment"]
    assert trial.optimizer.lr == values["optimizer.lr"] and trial.data.batch_size == 8
    assert trial.task.label_smoothing == values["task.label_smoothing"]


def test_space_is_edited_on_the_command_line():
    _, params = space_of("tune.space.finetune.choices=[partial,full]", "tune.space.task=null",
                         "tune.space.augment=null", "+tune.space.model.dropout={low:0.0,high:0.5}")
    by_path = {p.path: p for p in params}
    assert set(by_path) == {"optimizer.lr", "optimizer.weight_decay", "finetune", "finetune.trainable_stages",
                            "model.dropout"}
    assert by_path["finetune"].choices == ("partial", "full") and by_path["finetune"].group


@pytest.mark.parametrize("override,message", [
    ("+tune.space.optimizer.lrr={low:0.1,high:1.0}", r"tune.space.optimizer.lrr: .*Did you mean 'lr'"),
    ("tune.space.finetune.choices=[freeze,freez]", r"tune.space.finetune.choices has 'freez'.*Did you mean 'freeze'"),
    ("tune.space.optimizer.lr.low=0", r"tune.space.optimizer.lr.log=true needs low > 0"),
    ("tune.space.optimizer.lr=0.01", r"tune.space.optimizer.lr=0.01 is not a search range"),
    ("+tune.space.optimizer.lr.hi=3", r"tune.space.optimizer.lr.hi is not a search option.*Did you mean 'high'"),
    ("tune.space.task.label_smoothing.high=-1", r"tune.space.task.label_smoothing needs numbers low < high"),
])
def test_bad_space_keys_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        space_of(override)


def test_a_bad_space_fails_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["tune", "recipe=small_similar", "+tune.space.optimizer.lrr={low:0.1,high:1.0}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("transferkit: error: ConfigError: tune.space") and len(lines) == 2
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(SystemExit):
        cli.main(["tune", "recipe=small_similar", "tune.n_trials=0"])
    assert "ConfigError: tune.n_trials=0 must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_pruning_callback_stops_a_trial_below_the_median():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    first = study.ask()
    first.report(0.9, step=1)
    study.tell(first, 0.9)

    def validate(value: float):
        callback = PruneOnValidation(study.ask(), "val/acc")
        trainer = SimpleNamespace(sanity_checking=False, should_stop=False, current_epoch=0,
                                  callback_metrics={"val/acc": torch.tensor(value)})
        callback.on_validation_end(trainer, None)
        return callback, trainer

    good, trainer = validate(0.95)
    assert good.pruned_at is None and not trainer.should_stop
    bad, trainer = validate(0.10)
    assert bad.pruned_at == 1 and trainer.should_stop
    assert bad.trial.storage.get_trial(bad.trial._trial_id).intermediate_values == {1: pytest.approx(0.1)}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_search_resumes_its_study_and_its_best_recipe_reruns(image_folder, fast, tmp_path):
    space = ["tune.space.finetune.choices=[freeze,partial]", "tune.space.augment=null", "tune.space.task=null",
             "finetune.head_solver=sgd", "tune.pruner=none"]
    first = cli.run(["tune", f"data.root={image_folder}", *fast, *space, "tune.n_trials=1"])
    tune_dir = Path(first["run_dir"])
    assert first["trials"]["complete"] == 1 and (tune_dir / "study.db").is_file()
    stamps = {"0": (tune_dir / "trials" / "0" / "results.json").stat().st_mtime_ns}
    # A process killed mid-trial leaves it RUNNING in the study: resume runs it again with its values.
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tune_dir / 'study.db'}")
    killed = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)})
    for key, value in {"host": os.uname().nodename, "pid": dead_pid(), "overrides": []}.items():
        killed.set_user_attr(key, value)

    again = cli.run(["tune", f"resume={tune_dir}", "tune.n_trials=3"])
    assert again["run_dir"] == str(tune_dir) and again["trials"]["complete"] == 3 and again["trials"]["fail"] == 1
    for n, stamp in stamps.items():  # finished trials are not redone
        assert (tune_dir / "trials" / n / "results.json").stat().st_mtime_ns == stamp
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tune_dir / 'study.db'}")
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == killed.number)
    assert retry.params["optimizer.lr"] == killed.params["optimizer.lr"]
    drawn = [tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"]
    assert len(set(drawn)) == 3  # the resumed session draws new values, not the first session's again
    rows = list(csv.DictReader((tune_dir / "trials.csv").open()))
    assert [r["state"] for r in rows].count("COMPLETE") == 3 and "finetune" in rows[0]
    for name in ("optimization_history.png", "param_importances.png", "best_recipe.yaml", "results.json"):
        assert (tune_dir / name).is_file(), name
    with pytest.raises(ConfigError, match="optimizer.lr cannot change when resuming"):
        cli.run(["tune", f"resume={tune_dir}", "optimizer.lr=0.1"])

    # best_recipe.yaml composes to the best trial's config and re-runs it with `recipe=<file>`.
    recipe = tune_dir / "best_recipe.yaml"
    assert recipe.read_text().startswith("# @package _global_")
    best = study.best_trial
    composed = OmegaConf.to_container(cli.compose_config([f"recipe={recipe}"]))
    expected = OmegaConf.to_container(cli.compose_config(best.user_attrs["overrides"]))
    assert {k: v for k, v in composed.items() if k != "recipe"} == {k: v for k, v in expected.items() if k != "recipe"}
    rerun = cli.run(["fit", f"recipe={recipe}", f"run_dir={tmp_path / 'rerun'}"])
    assert rerun["recipe"] == str(recipe)
    assert rerun["metrics"]["best/val/acc"] == pytest.approx(best.value)


@pytest.mark.slow
def test_an_interrupted_search_says_how_to_resume_and_redoes_the_stopped_trial(image_folder, fast, monkeypatch):
    from transferkit.commands import tune
    from transferkit.runtime.guards import RunInterrupted

    def stopped(spec, datamodule, callbacks=None):
        raise RunInterrupted("SIGTERM stopped the run", 143)

    monkeypatch.setattr(tune, "train_and_test", stopped)
    space = ["tune.space.finetune=null", "tune.space.augment=null", "tune.space.task=null", "tune.n_trials=1"]
    with pytest.raises(RunInterrupted, match=r"resume it with: python -m transferkit tune resume=") as stop:
        cli.run(["tune", f"data.root={image_folder}", *fast, *space])
    assert stop.value.exit_code == 143
    tune_dir = Path(fast[-1].split("=", 1)[1])
    assert json.loads((tune_dir / "results.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()

    resumed = cli.run(["tune", f"resume={tune_dir}"])
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tune_dir / 'study.db'}")
    first, again = study.trials
    assert first.state.name == "FAIL" and first.user_attrs["interrupted"]
    assert again.user_attrs["retry_of"] == 0 and again.params == first.params
    assert resumed["status"] == "completed" and resumed["trials"]["complete"] == 1
