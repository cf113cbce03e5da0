"""Sweeps (`fit -m ...`): grid expansion, the sweep directory and its tables, failed jobs, refused DDP,
launchers, and `recipe=<file>`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from transferkit.cli import app as cli
from transferkit.evaluation.reports.sweep_table import sort_rows
from transferkit.search.launchers import Launcher, refusal

RECIPE = """# @package _global_
defaults:
  - override /finetune: full
  - override /scheduler: constant
optimizer:
  lr: 0.003
"""


def test_grid_expands_values_and_group_choices():
    jobs, run_dir = cli.expand_sweep(["recipe=small_similar", "optimizer.lr=0.01,0.001", "finetune=freeze,full",
                                      "run_dir=/tmp/my-sweep"])
    assert run_dir == "/tmp/my-sweep" and [job.index for job in jobs] == [0, 1, 2, 3]
    assert [dict(job.swept) for job in jobs] == [
        {"optimizer.lr": lr, "finetune": ft} for lr in ("0.01", "0.001") for ft in ("freeze", "full")]
    assert all("run_dir" not in " ".join(job.overrides) for job in jobs)  # each job gets <run_dir>/<n>
    cfg = cli.compose_config(list(jobs[3].overrides))
    assert cfg.finetune.strategy == "full" and cfg.optimizer.lr == 0.001 and cfg.recipe == "small_similar"


def test_grid_takes_hydra_sweep_functions():
    jobs, _ = cli.expand_sweep(["seed=range(1,3)", "optimizer=choice(sgd,adam)", "recipe=glob(small_*)"])
    assert len(jobs) == 2 * 2 * 2
    assert {job.swept["recipe"] for job in jobs} == {"small_similar", "small_different"}
    assert {job.swept["seed"] for job in jobs} == {"1", "2"}
    with pytest.raises(cli.UsageError, match="augment=.*matches nothing"):
        cli.expand_sweep(["augment=glob(zzz*)"])
    with pytest.raises(cli.UsageError, match="run_dir= cannot be swept"):
        cli.expand_sweep(["run_dir=a,b"])
    with pytest.raises(cli.UsageError, match="resume=... continues one run"):
        cli.expand_sweep(["resume=last", "seed=1,2"])


def test_rows_sort_by_the_monitored_metric_failed_last():
    rows = [{"job": 0, "status": "failed"}, {"job": 1, "status": "completed", "metrics": {"best/val/loss": 0.5}},
            {"job": 2, "status": "completed", "metrics": {"best/val/loss": 0.2}}]
    assert [r["job"] for r in sort_rows(rows, {"metric": "best/val/loss", "mode": "min"})] == [2, 1, 0]
    assert [r["job"] for r in sort_rows(rows, {"metric": "best/val/loss", "mode": "max"})] == [1, 2, 0]


@pytest.mark.parametrize(("launcher", "trainer"), [
    ("basic", ["trainer.strategy=ddp"]),
    ("submitit_local", ["trainer.strategy=ddp_find_unused_parameters_true"]),
    ("basic", ["trainer.accelerator=cpu", "trainer.devices=2"]),  # strategy=auto picks DDP for 2 devices
])
def test_ddp_under_a_local_launcher_is_refused_in_one_line(launcher, trainer, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "-m", f"hydra/launcher={launcher}", "optimizer.lr=0.1,0.01", *trainer])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "is refused under the" in err and launcher in err and "re-running this command line" in err
    assert not (tmp_path / "multirun").exists()  # refused before anything was created


def test_comma_list_without_m_says_to_add_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "optimizer.lr=0.01,0.001"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "optimizer.lr=0.01,0.001" in err and "add -m" in err


def test_unknown_launcher_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "-m", "hydra/launcher=submitit_lokal", "seed=1,2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Did you mean 'submitit_local'?" in err and len(err.splitlines()) == 1


def test_ddp_is_left_to_slurm():
    ddp = {"strategy": "ddp", "devices": 4, "num_nodes": 1, "accelerator": "gpu"}
    assert refusal(ddp, Launcher("submitit_slurm")) is None
    assert refusal({"strategy": "auto", "devices": 1, "accelerator": "cpu"}, Launcher("basic")) is None


def test_slurm_launcher_builds_hydra_submitit_launchers_job(tmp_path, monkeypatch):
    """The submitit executor is built as hydra-submitit-launcher builds it (a fake srun: no cluster here)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install '.[sweep]'")
    from dataclasses import replace

    from transferkit.search.launchers import build_executor, launcher_of

    (tmp_path / "bin").mkdir()
    for tool in ("srun", "sbatch"):
        (tmp_path / "bin" / tool).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / "bin" / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{__import__('os').environ['PATH']}")
    launcher = launcher_of("fit", ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                       "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"])
    launcher = replace(launcher, params={**launcher.params, "submitit_folder": str(tmp_path / "%j")})
    script = build_executor(launcher)._executor._make_submission_file_text("cmd", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--job-name=transferkit-fit"):
        assert f"#SBATCH {line}" in script
    with pytest.raises(Exception, match="Key 'partitoin' not in 'SlurmQueueConf'"):
        launcher_of("fit", ["hydra/launcher=submitit_slurm", "hydra.launcher.partitoin=gpu"])


def test_recipe_file_path_composes_and_is_recorded(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    cfg = cli.compose_config(["recipe=recipes/mine.yaml", "optimizer.weight_decay=0.5"])
    assert cfg.finetune.strategy == "full" and cfg.scheduler.name == "constant" and cfg.optimizer.lr == 0.003
    assert cfg.recipe == str(tmp_path / "recipes" / "mine.yaml")  # absolute: re-runs from anywhere
    assert cli.compose_config([f"recipe={tmp_path / 'recipes' / 'mine.yaml'}"]).optimizer.lr == 0.003
    assert cli.compose_config(["recipe=small_similar"]).finetune.strategy == "freeze"  # names still work


def test_missing_recipe_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "recipe=nowhere/mine.yaml"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "nowhere" / "mine.yaml") in err and "small_similar" in err and "Traceback" not in err


def read_table(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "sweep.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_sweep_writes_one_run_per_job_and_a_sorted_table_with_the_failed_job(image_folder, fast, tmp_path,
                                                                           test_resnet_weights, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(RECIPE.replace("full", "freeze"))
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(SystemExit) as exit_info:  # a failed job: the sweep goes on, the exit code says so
        cli.main(["fit", "-m", f"recipe={recipe}", f"data.root={image_folder}", *fast,
                  "finetune.head_solver=sgd", "optimizer.lr=0.05,0.0001", f"model.weights={test_resnet_weights},{missing}"])
    assert exit_info.value.code == 1
    assert "2 of 4 sweep jobs did not complete" in capsys.readouterr().err
    sweep_dir = tmp_path / "run"  # run_dir= names the sweep directory
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "2", "3", "results.json", "sweep.csv", "sweep.md"]
    rows = read_table(sweep_dir)
    assert [r["status"] for r in rows] == ["completed", "completed", "failed", "failed"]
    scores = [float(r["best/val/acc"]) for r in rows[:2]]
    assert scores == sorted(scores, reverse=True) and {r["rank"] for r in rows} == {"1", "2", ""}
    assert all(r["test/acc"] and float(r["wall_s"]) > 0 for r in rows[:2])
    assert all(str(missing) in r["error"] and r["model.weights"] == str(missing) for r in rows[2:])
    assert "| rank | job | model.weights | optimizer.lr | status | best/val/acc | test/acc |" in \
        (sweep_dir / "sweep.md").read_text()
    failed = json.loads((sweep_dir / rows[2]["run_dir"] / "results.json").read_text())
    assert failed["status"] == "failed" and str(missing) in failed["message"]  # every job has its run directory
    summary = json.loads((sweep_dir / "results.json").read_text())
    assert summary["status"] == "failed" and summary["counts"] == {"completed": 2, "failed": 2}
    assert summary["best"]["job"] == int(rows[0]["job"]) and summary["swept"]["optimizer.lr"] == ["0.05", "0.0001"]
    job = json.loads((sweep_dir / rows[0]["run_dir"] / "results.json").read_text())
    assert job["recipe"] == str(recipe) and job["status"] == "completed"  # recorded like a named recipe


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_job_in_a_submitit_process(image_folder, fast):
    """hydra-submitit-launcher's local launcher, as on a cluster: the job is pickled, run by a submitit
    subprocess through cli.run, and its record comes back (one job: each process re-imports torch)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install '.[sweep]'")
    results = cli.run(["fit", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                       f"data.root={image_folder}", *fast, "seed=7"])
    sweep_dir = Path(results["sweep_dir"])
    assert results["launcher"]["name"] == "submitit_local" and results["counts"] == {"completed": 1}
    assert results["launcher"]["params"]["timeout_min"] == 10
    (job,) = results["jobs"]
    assert "test/acc" in job["metrics"] and "seed: 7" in (sweep_dir / "0" / "config.yaml").read_text()
    assert Path(job["run_dir"]) == sweep_dir / "0" and (sweep_dir / "0" / "checkpoints" / "best.ckpt").is_file()
    logs = list((sweep_dir / ".submitit").glob("*/*_0_log.out"))  # submitit ran it: its pickles and logs
    assert logs and "Job completed successfully" in logs[0].read_text()
    assert [r["status"] for r in read_table(sweep_dir)] == ["completed"]


@pytest.mark.parametrize("interrupt", ["fit", "elsewhere"])
def test_an_interrupted_job_stops_the_sweep_after_writing_the_table(tmp_path, interrupt):
    """Ctrl+C in job 1 (mid-fit: RunInterrupted; before it: KeyboardInterrupt): job 2 never starts,
    the table is written."""
    from transferkit.search.launchers import Job
    from transferkit.runtime.guards import RunInterrupted
    from transferkit.search.sweep import run_sweep

    def fake_run(argv: list[str]) -> dict:
        if "seed=2" in argv:
            raise RunInterrupted("SIGINT stopped the run", 130) if interrupt == "fit" else KeyboardInterrupt
        return {"status": "completed", "metrics": {"best/val/acc": 0.5, "test/acc": 0.4}, "epochs": 1,
                "monitor": {"metric": "val/acc", "mode": "max"}, "wall_seconds": 1.0,
                "run_dir": argv[-1].removeprefix("run_dir=")}

    jobs = [Job(n, (f"seed={n + 1}",), {"seed": str(n + 1)}) for n in range(3)]
    with pytest.raises(RunInterrupted, match="the sweep stopped at job 1") as stop:
        run_sweep("fit", jobs, Launcher(), str(tmp_path / "sweep"), fake_run, ["fit", "-m", "seed=1,2,3"])
    assert stop.value.exit_code == 130
    rows = read_table(tmp_path / "sweep")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "interrupted"), ("2", "not run")]
    summary = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert summary["status"] == "interrupted" and summary["best"]["job"] == 0
