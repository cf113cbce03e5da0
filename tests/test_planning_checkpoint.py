"""`transferkit.planning.checkpoint`: what test / predict / export evaluate, read from the config once."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from tests.test_ensemble_tta import constant_task, save_checkpoint
from transferkit.cli.app import compose_config
from transferkit.errors import ConfigError
from transferkit.planning.checkpoint import checkpoint_spec, predict_spec, spec_for_checkpoint


def test_checkpoint_spec_records_what_was_named(tmp_path):
    task = constant_task([0.5, 0.25, 0.25])
    fit = save_checkpoint(task, tmp_path / "fit" / "checkpoints" / "best.ckpt")
    one = checkpoint_spec(str(fit))
    assert one.paths == (str(fit),) and one.recorded == str(fit) and one.single
    run_dir = checkpoint_spec(OmegaConf.create([str(tmp_path / "fit")]), "flip")
    assert run_dir.paths == (str(fit),) and run_dir.recorded == [str(fit)] and not run_dir.single
    with pytest.raises(ConfigError, match="tta='mirror' is unknown"):
        checkpoint_spec(str(fit), "mirror")
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"x")
    assert checkpoint_spec(str(exported), exported=True).exported
    with pytest.raises(ValueError, match="tta='flip' needs the checkpoint"):
        checkpoint_spec(str(exported), "flip", exported=True)


def test_predict_spec_checks_input_before_the_checkpoint(tmp_path):
    cfg = compose_config([f"input={tmp_path / 'missing'}", f"ckpt_path={tmp_path / 'missing.ckpt'}"])
    with pytest.raises(FileNotFoundError, match="input="):
        predict_spec(cfg)
    ckpt = save_checkpoint(constant_task([0.5, 0.25, 0.25]), tmp_path / "a.ckpt")
    cfg = compose_config([f"input={tmp_path}", f"ckpt_path={ckpt}", "top_k=2", "data.num_workers=0"])
    spec = predict_spec(cfg)
    assert (spec.input, spec.top_k, spec.num_workers, spec.output) == (str(tmp_path), 2, 0, None)
    assert spec.model.recorded == str(ckpt) and spec.config["top_k"] == 2


def test_spec_for_checkpoint_takes_model_and_input_format_from_the_checkpoint():
    cfg = compose_config(["recipe=small_similar", "run_dir=/tmp/somewhere", "trainer.max_epochs=3"])
    with open_dict(cfg):
        cfg.model.backbone, cfg.data.image_size = "resnet50", "auto"
    hparams = {"model": {"backbone": "test_resnet", "in_chans": 3},
               "data_config": {"image_size": 40, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3,
                               "interpolation": "bicubic"}}
    spec = spec_for_checkpoint(cfg, hparams, "test", "run/checkpoints/best.ckpt")
    fmt = spec.model.input
    assert (spec.model.backbone, fmt.in_chans, fmt.image_size, fmt.interpolation) == ("test_resnet", 3, 40, "bicubic")
    assert spec.data.datamodule_kwargs(3)["image_size"] == 40 and spec.data.options["mean"] == [0.5] * 3
    assert spec.model.weights.path == "run/checkpoints/best.ckpt" and spec.outputs.run_dir == "/tmp/somewhere"
    assert spec.trainer.max_epochs == 3 and spec.config["model"]["backbone"] == "test_resnet"
    assert spec.config["data"]["image_size"] == 40 and Path(spec.config["run_dir"]) == Path("/tmp/somewhere")
