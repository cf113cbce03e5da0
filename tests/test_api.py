"""The Python API: commands as functions, keys -> the CLI's overrides, Run (predict, show) and load."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

import importlib.util

import transferkit
from transferkit.commands.table import COMMANDS
from tests.conftest import write_class_folder
from transferkit import api
from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.runtime.guards import RunInterrupted
from transferkit.runs import Run
from transferkit.runtime.run_paths import read_located


def test_import_transferkit_loads_neither_torch_nor_hydra() -> None:
    code = ("import sys, transferkit; transferkit.fit; transferkit.load; transferkit.Run; transferkit.ConfigError; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'hydra', 'timm') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
    assert "NO_ALBUMENTATIONS_UPDATE" not in subprocess.run(
        [sys.executable, "-c", "import os, transferkit; print(sorted(os.environ))"],
        capture_output=True, text=True, env={k: v for k, v in env.items() if k != "NO_ALBUMENTATIONS_UPDATE"},
        check=True).stdout


def test_every_cli_command_has_a_documented_function() -> None:
    for command in COMMANDS.values():  # the one table the CLI, the API and sweeps read
        name = command.api_name
        function = getattr(transferkit, name)
        assert name == command.name.replace("-", "_") and function.__name__ == name
        assert f"transferkit.{name}(" in command.example and command.example in function.__doc__
        assert importlib.util.find_spec(command.module) is not None
    for name in ("load", "Run", "run_command", "overrides_of", "ConfigError", "RunStopped", "RunInterrupted",
                 "RunDiverged"):
        assert "Example:" in getattr(transferkit, name).__doc__
    for name in ("results", "config", "task"):
        assert "Example:" in getattr(Run, name).__doc__
    for name in ("predict", "show", "checkpoints"):
        assert "Example:" in getattr(Run, name).__doc__
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        transferkit.fitt  # noqa: B018


def composed(overrides: list[str]) -> dict:
    return OmegaConf.to_container(cli.compose_config(overrides), resolve=False)


def test_nested_keys_compose_the_same_config_as_the_command_line(tmp_path: Path) -> None:
    root = tmp_path / "my images, 2024's"  # a comma and a quote: the override grammar needs quoting here
    keys = {"seed": 7, "model": "resnet18", "data": {"root": str(root), "background": [0, 0, 0], "manifest": None},
            "trainer": {"max_epochs": 5, "detect_anomaly": False, "gradient_clip_val": 0.5},
            "optimizer": {"lr": 1e-4}, "early_stopping": {"patience": 3}, "run_dir": tmp_path / "run"}
    from_python = api.overrides_of("small_similar", ["augment=strong"], keys)
    typed = ["recipe=small_similar", "augment=strong", "seed=7", "model=resnet18", "data.root='" + str(root).replace("'", "\\'") + "'",
             "data.background=[0,0,0]", "data.manifest=null", "trainer.max_epochs=5", "trainer.detect_anomaly=false",
             "trainer.gradient_clip_val=0.5", "optimizer.lr=0.0001", "early_stopping.patience=3",
             f"run_dir={tmp_path / 'run'}"]
    python_cfg = composed(from_python)
    assert python_cfg == composed(typed)
    assert python_cfg["data"]["root"] == str(root) and python_cfg["model"]["backbone"] == "resnet18"
    assert python_cfg["trainer"]["detect_anomaly"] is False and python_cfg["recipe"] == "small_similar"


def test_a_recipe_file_path_with_spaces(tmp_path: Path) -> None:
    recipe = tmp_path / "my recipes" / "mine.yaml"
    recipe.parent.mkdir()
    recipe.write_text("# @package _global_\ntrainer:\n  max_epochs: 3\n")
    cfg = composed(api.overrides_of(recipe, None, {}))
    assert cfg["trainer"]["max_epochs"] == 3 and cfg["recipe"] == str(recipe)


@pytest.mark.parametrize("call, match", [
    (lambda: transferkit.fit(trainer={"max_epochz": 1}), "max_epochz"),
    (lambda: transferkit.fit(model="resnet1"), "Available model options"),
    (lambda: transferkit.fit("small_similr"), "small_similar"),
    (lambda: transferkit.fit(overrides="trainer.max_epochs=1"), "must be a list"),
    (lambda: transferkit.fit(overrides=["-m", "seed=1,2"]), "sweep"),
    (lambda: transferkit.fit(seed=object()), "seed="),
    (lambda: transferkit.fit("no/such/recipe.yaml"), "no such file"),
])
def test_bad_keys_raise_exceptions_not_system_exit(call, match) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


def test_a_system_exit_or_ctrl_c_inside_a_run_becomes_run_interrupted(monkeypatch, tmp_path: Path) -> None:
    from transferkit.training.rundir import ENV_RUN_DIR

    handler = signal.getsignal(signal.SIGINT)

    def stopped(argv):
        os.environ[ENV_RUN_DIR] = str(tmp_path)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what Lightning does on a KeyboardInterrupt
        raise SystemExit(1)

    monkeypatch.setattr(cli, "run", stopped)
    monkeypatch.delenv(ENV_RUN_DIR, raising=False)
    with pytest.raises(RunInterrupted, match=f"SystemExit.*{tmp_path}") as caught:
        transferkit.fit()
    assert caught.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is handler and ENV_RUN_DIR not in os.environ
    monkeypatch.setattr(cli, "run", lambda argv: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(RunInterrupted, match="KeyboardInterrupt"):
        transferkit.summary()


def ours(environ) -> dict:
    return {k: v for k, v in environ.items() if k.startswith(("TRANSFERKIT_", "PL_", "NO_ALBUMENTATIONS"))}


# -- a real (tiny) run, shared by the tests below -------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, test_resnet_weights) -> tuple[Run, Path]:
    root = write_class_folder(tmp_path_factory.mktemp("data") / "images")
    out = tmp_path_factory.mktemp("runs")
    roots, filters, env = list(logging.getLogger().handlers), list(warnings.filters), ours(os.environ)
    run = transferkit.fit(
        "small_similar", ["model.backbone=test_resnet"],
        model={"weights": test_resnet_weights, "in_chans": 3}, data={"root": root, "image_size": 32, "batch_size": 4,
                                                                    "num_workers": 0},
        trainer={"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                 "enable_model_summary": False}, run_dir=out / "fit")
    assert logging.getLogger().handlers == roots and warnings.filters == filters  # nothing global changed
    assert ours(os.environ) == env  # (torch and cv2 set some of their own at import)
    assert not logging.getLogger("transferkit").handlers
    return run, root


def test_fit_returns_the_run(trained) -> None:
    run, root = trained
    saved = json.loads((run.dir / "results.json").read_text())  # the run's own paths relative to it
    assert run.dir.is_dir() and run.results == read_located(saved, run.dir) and saved["run_dir"] == "."
    assert run.results["status"] == "completed" and "test/acc" in run.results["metrics"]
    assert run.config.data.root == str(root) and run.config.model.backbone == "test_resnet"
    assert not run.task.training and run.task.class_names == ["cat", "dog"]
    assert "test/acc=" in repr(run)


def test_predict_takes_every_kind_of_input_with_the_cli_preprocessing(trained, tmp_path: Path) -> None:
    run, root = trained
    files = sorted((root / "cat").glob("*.png"))[:2]
    pixels = np.asarray(Image.open(files[0]))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = run.predict([files[0], str(root / "dog"), Image.open(files[1]), pixels, pixels[..., 0],
                        pixels[..., :1], np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)]),
                        tmp_path / "broken.png"], top_k=2)
    assert isinstance(rows, list) and len(rows) == 1 + 6 + 5 + 1  # pandas is not installed here
    assert all(set(r) == {"path", "label", "probability", "top_k", "error"} for r in rows)
    assert rows[0]["path"] == str(files[0]) and rows[1]["path"].startswith(str(root / "dog"))
    assert [r["path"] for r in rows[7:12]] == [2, 3, 4, 5, 6]  # in-memory images: their index in inputs
    assert rows[-1]["error"] and rows[-1]["label"] == "" and rows[-1]["probability"] is None
    # A file and its pixels in memory (also as RGBA with full alpha) go through the same preprocessing.
    assert rows[8]["probability"] == pytest.approx(rows[0]["probability"], abs=1e-6)
    assert rows[11]["probability"] == pytest.approx(rows[0]["probability"], abs=1e-6)
    assert all(len(r["top_k"].split(";")) == 2 for r in rows[:-1])
    # ... and the same numbers as the command line's predictions.csv.
    cli.run(["predict", f"ckpt_path={run.dir}", f"input={files[0]}", f"run_dir={tmp_path / 'cli'}", "top_k=2"])
    written = list(csv.DictReader((tmp_path / "cli" / "predictions.csv").open()))
    assert written[0]["top_k"] == rows[0]["top_k"] and float(written[0]["probability"]) == pytest.approx(
        rows[0]["probability"], abs=1e-4)
    single = run.predict(pixels)  # one image, not in a list
    assert len(single) == 1 and single[0]["path"] == 0


def test_predict_refuses_bad_inputs(trained, tmp_path: Path) -> None:
    run, _ = trained
    with pytest.raises(ValueError, match=r"inputs\[1\].*dtype float32"):
        run.predict([np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.float32)])
    with pytest.raises(ValueError, match=r"inputs\[0\].*shape \(8, 8, 2\)"):
        run.predict([np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        run.predict([tmp_path / "missing.png"])
    with pytest.raises(TypeError, match="inputs\\[0\\]: a int"):
        run.predict([3])


def test_predict_returns_a_dataframe_when_pandas_is_installed(trained, monkeypatch) -> None:
    run, _ = trained
    pandas = types.ModuleType("pandas")
    pandas.DataFrame = lambda rows, columns: ("DataFrame", rows, columns)
    monkeypatch.setitem(sys.modules, "pandas", pandas)
    kind, rows, columns = run.predict(np.zeros((32, 32), np.uint8))
    assert kind == "DataFrame" and columns == ["path", "label", "probability", "top_k", "error"] and len(rows) == 1


def test_segmentation_predict_returns_one_mask_per_input(tmp_path: Path) -> None:
    from tests.test_segmentation_task import make_task

    run = Run(tmp_path)
    run._task = make_task(data_config={"image_size": 32, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3}).eval()
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    masks = run.predict([image, Image.fromarray(image[:20, :30]), tmp_path / "a.png", tmp_path / "broken.png"])
    assert [m.shape for m in masks[:3]] == [(45, 70), (20, 30), (45, 70)] and masks[3] is None


def test_load_a_run_directory_or_a_checkpoint(trained, tmp_path: Path) -> None:
    run, _ = trained
    by_dir, by_ckpt = transferkit.load(run.dir), transferkit.load(run.dir / "checkpoints" / "last.ckpt")
    assert by_dir.results == run.results and by_ckpt.dir == run.dir
    assert by_dir.checkpoints() == [Path(run.results["best_checkpoint"])]
    assert by_ckpt.checkpoints() == [run.dir / "checkpoints" / "last.ckpt"]
    x = np.full((32, 32, 3), 200, np.uint8)
    assert by_dir.predict(x)[0]["top_k"] == run.predict(x)[0]["top_k"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        transferkit.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        transferkit.load(tmp_path)
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="junk.ckpt"):
        transferkit.load(tmp_path / "junk.ckpt")


def test_show_displays_the_report_else_the_plots_and_metrics(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    from transferkit import runs

    run, _ = trained
    run.show()  # no IPython shell: text
    assert "test/acc" in capsys.readouterr().out
    shown = []
    monkeypatch.setattr(runs, "ipython_display", lambda: shown.append)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text(json.dumps({"command": "fit", "metrics": {"test/acc": 0.5}}))
    Image.new("RGB", (4, 4)).save(copy / "plot.png")
    Run(copy).show()
    assert [type(s).__name__ for s in shown] == ["Markdown", "Image", "Markdown"] and "0.5000" in shown[-1].data
    shown.clear()
    (copy / "report").mkdir()
    Image.new("RGB", (4, 4)).save(copy / "report" / "curves.png")
    (copy / "report.html").write_text('<h1>report</h1><img src="report/curves.png"><img src="missing.png">')
    Run(copy).show()
    assert [type(s).__name__ for s in shown] == ["HTML"] and "&lt;h1&gt;report" in shown[0].data
    assert "data:image/png;base64," in shown[0].data and "src=&quot;missing.png&quot;" in shown[0].data


def test_other_commands_make_the_same_run_as_the_command_line(tmp_path: Path) -> None:
    from_python = transferkit.summary(model={"backbone": "test_resnet"}, data={"image_size": 32}, run_dir=tmp_path / "py")
    typed = cli.run(["summary", "model.backbone=test_resnet", "data.image_size=32", f"run_dir={tmp_path / 'cli'}"])
    assert from_python.dir == tmp_path / "py" and from_python.results["command"] == "summary"
    assert from_python.results["rows"] == typed["rows"] and from_python.results["params"] == typed["params"]
    assert json.loads((from_python.dir / "results.json").read_text())["rows"] == typed["rows"]


def test_export_then_load_the_exported_model_and_predict(trained, tmp_path: Path) -> None:
    run, root = trained
    exported = transferkit.export(ckpt_path=run.dir / "checkpoints" / "best.ckpt", format="torchscript",
                                  run_dir=tmp_path / "export")
    model = transferkit.load(exported.dir / "model.torchscript.pt")
    pixels = np.asarray(Image.open(sorted((root / "dog").glob("*.png"))[0]))
    assert model.predict(pixels)[0]["top_k"] == run.predict(pixels)[0]["top_k"]
    with pytest.raises(ConfigError, match="exported model"):
        model.task  # noqa: B018


def test_docstring_examples_that_need_no_run_pass() -> None:
    import doctest

    from transferkit.cli import overrides
    for module in (overrides, api):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0
