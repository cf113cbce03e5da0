"""The command line: composition, recipes, Trainer flags, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from transferkit.cli import app as cli
def test_compose_defaults_has_public_contract():
    cfg = cli.compose_config([])
    for key in ("root", "image_size", "batch_size", "num_workers"):
        assert key in cfg.data
    assert {"backbone", "weights"} <= set(cfg.model)
    assert cfg.finetune.strategy in ("freeze", "partial", "full", "auto")
    assert "seed" in cfg and "max_epochs" in cfg.trainer


def test_recipe_selects_group_options_and_values():
    cfg = cli.compose_config(["recipe=small_similar"])
    assert cfg.finetune.strategy == "freeze"
    assert cfg.model.weights == "auto" and cfg.recipe == "small_similar"  # recipes hold no model
    from transferkit.planning.plan import plan_spec

    spec = plan_spec(cfg, "fit")  # embedded digits -> the house backbone, its grey 32-px format
    assert spec.model.options["weights"] == "charnet" and spec.model.backbone == "resnet10t"
    assert spec.model.input.in_chans == 1 and spec.data.image_size == 32


def test_command_line_beats_recipe():
    cfg = cli.compose_config(["recipe=small_similar", "trainer.max_epochs=3", "finetune=full"])
    assert cfg.trainer.max_epochs == 3
    assert cfg.finetune.strategy == "full"


def test_any_trainer_flag_is_reachable():
    cfg = cli.compose_config(["trainer.detect_anomaly=true", "trainer.devices=4", "trainer.strategy=ddp"])
    assert cfg.trainer.detect_anomaly is True
    assert cfg.trainer.devices == 4 and cfg.trainer.strategy == "ddp"


@pytest.mark.parametrize("overrides,message", [
    (["data.batchsize=3"], r"data.batchsize is not an option; valid keys: \[.*'batch_size'.*\]. Did you mean 'batch_size'\?"),
    (["data.foo.bar=1"], r"data.foo is not an option; valid keys: \[.*'image_size'"),
    (["trainer.max_epochz=3"], r"trainer.max_epochz is not an option: neither a key of the trainer group .* nor an "
                               r"argument of pytorch_lightning.Trainer. Did you mean 'max_epochs'\?"),
    (["finetune=full", "optimizer.lr=0.1", "optimizer.weight_decai=0"], r"optimizer.weight_decai is not an option.*"
                                                                        r"Did you mean 'weight_decay'\?"),
])
def test_typo_fails_naming_the_key_and_the_valid_ones(overrides, message):
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        cli.compose_config(overrides)


@pytest.mark.parametrize("overrides,message", [
    (["finetune=full", "trainer.max_epochs=1x"], r"trainer.max_epochs='1x' must be a number \(its default is 10\)"),
    (["seed=x"], r"seed='x' must be a number"),
    (["optimizer.lr=fnd"], r"optimizer.lr='fnd' must be a number or 'find'"),
    (["data.image_size=big"], r"data.image_size='big' must be a number or 'auto'"),
    (["data.val_fraction=ten", "data.batch_size=8"], r"data.val_fraction='ten' must be a number"),
])
def test_a_word_for_a_number_fails_naming_the_key(overrides, message):
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        cli.compose_config(overrides)


def test_a_recipe_files_word_for_a_number_fails_naming_the_key(tmp_path):
    from transferkit.errors import ConfigError

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("trainer:\n  max_epochs: ten\n")
    with pytest.raises(ConfigError, match="trainer.max_epochs='ten' must be a number"):
        cli.compose_config([f"recipe={recipe}"])
    assert cli.compose_config(["optimizer.lr=find", "data.image_size=64", "data.num_workers=auto"]).optimizer.lr == "find"


def test_a_config_error_is_told_without_importing_lightning_or_making_a_run_directory(tmp_path):
    code = ("import sys\nfrom transferkit import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit as stop:\n"
            "    print(stop.code, 'pytorch_lightning' in sys.modules, 'torch' in sys.modules)\n")
    for override in ("data.batchsize=3", "trainer.max_epochs=1x"):
        proc = subprocess.run([sys.executable, "-c", code, "fit", override, f"run_dir={tmp_path / 'run'}"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.stdout.split() == ["1", "False", "False"], proc.stderr[-2000:]
        assert override.split("=")[0] in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_unknown_recipe_lists_recipes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "recipe=small_simlar"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "small_simlar" in err and "small_similar" in err and "Traceback" not in err


def test_unknown_command_suggests(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fitt"])
    assert "Did you mean 'fit'" in capsys.readouterr().err


def test_bad_trainer_flag_is_named():
    from dataclasses import replace

    from transferkit.planning.plan import plan_spec
    from transferkit.training.builders import build_trainer

    spec = plan_spec(cli.compose_config([]), "fit")
    spec = replace(spec, trainer=spec.trainer.with_flags(max_epoch=3))
    with pytest.raises(ValueError, match="trainer.max_epoch .*max_epochs"):
        build_trainer(spec, run_dir=__import__("pathlib").Path("."), monitor="val/acc", mode="max")


def test_module_entry_point_prints_usage():
    proc = subprocess.run([sys.executable, "-m", "transferkit"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "usage: python -m transferkit" in proc.stderr and "fit" in proc.stderr


def test_unknown_model_option_suggests_the_catalogue_name(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", "model=resnt50"])
    err = capsys.readouterr().err
    assert "Did you mean 'resnet50'?" in err and "vit_small_patch16_224" in err


def test_catalogue_options_are_timm_architectures_with_weights():
    from transferkit.config.files import group_options, load_group_option
    from transferkit.models.weights import hub_id

    options = group_options("model")
    assert {"auto", "charnet", "resnet18", "resnet50", "convnext_tiny", "efficientnet_b0",
            "mobilenetv3_large_100", "vit_small_patch16_224"} <= set(options)
    for option in set(options) - {"auto", "charnet"}:
        spec = load_group_option("model", option)
        assert spec["backbone"] == option and spec["weights"] == "auto" and spec["in_chans"] == "auto"
        assert hub_id(option).startswith("timm/")
        assert cli.compose_config([f"model={option}"]).model.backbone == option


@pytest.mark.parametrize("exit_code", [None, 2])
def test_module_entry_point_freezes_the_collector_as_the_process_ends(monkeypatch, exit_code):
    """`python -m transferkit` ends with gc.freeze(): shutdown then skips collecting the imports' objects."""
    import gc
    import runpy

    def main():
        if exit_code is not None:
            raise SystemExit(exit_code)

    monkeypatch.setattr(cli, "main", main)
    assert gc.get_freeze_count() == 0
    try:
        if exit_code is None:
            runpy.run_module("transferkit", run_name="__main__")
        else:
            with pytest.raises(SystemExit):
                runpy.run_module("transferkit", run_name="__main__")
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_an_unknown_group_option_lists_the_options(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", "scheduler=cosin"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Available scheduler options: [" in err and "Did you mean 'cosine'?" in err


def test_a_value_lightning_refuses_is_a_config_error_naming_the_trainer_setting(tmp_path):
    from transferkit.errors import ConfigError
    from transferkit.planning.plan import plan_spec
    from transferkit.training.builders import build_trainer

    spec = plan_spec(cli.compose_config(["trainer.max_epochs=-3"]), "fit")
    with pytest.raises(ConfigError, match=r"a trainer\.\* setting is refused by Lightning: `max_epochs` must be"):
        build_trainer(spec, run_dir=tmp_path, monitor="val/acc", mode="max")


@pytest.mark.parametrize("override,message", [
    ("hydra.run.dir=elsewhere", "a run's directory is run_dir="),
    ("hydra/launcher=submitit_local", "take effect in a sweep only: add -m"),
])
def test_hydras_own_settings_outside_a_sweep_are_refused_not_ignored(override, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", override, f"run_dir={tmp_path / 'run'}"])
    assert stop.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "run").exists()
