"""Ensembles and test-time augmentation: exact averaging, flips undone on masks, multiscale sizes,
class lists checked, where the flips record comes from."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from transferkit.errors import ConfigError
from transferkit.tasks.loading import checkpoint_paths, load_ensemble, trained_flips
from transferkit.tasks.classification import ClassificationTask
from transferkit.tasks.ensemble import EnsembleTask, average_probabilities
from transferkit.tasks.tta import check_tta, multiscale_sizes, tta_probabilities

MODEL = {"backbone": "test_resnet", "in_chans": 3}
DATA = {"image_size": 32, "in_chans": 3, "mean": [0.5], "std": [0.5], "interpolation": "bilinear",
        "augment": "light", "flips": True}


def constant_task(probs: list[float], classes=("a", "b", "c"), data: dict | None = None) -> ClassificationTask:
    """A real classifier whose head ignores the image: softmax(bias) = `probs` for every input."""
    task = ClassificationTask(num_classes=len(classes), class_names=list(classes), model=MODEL,
                              data_config=data or DATA).eval()
    linear = [m for m in task.head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor(probs).log())
    return task


def save_checkpoint(task, path: Path) -> Path:
    """What fit writes, as far as loading needs it (weights-only loadable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "transferkit_task": type(task).__name__, "pytorch-lightning_version": "2.5.0"}, path)
    return path


def test_ensemble_averages_the_members_softmax_exactly():
    one, two = constant_task([0.6, 0.3, 0.1]), constant_task([0.1, 0.8, 0.1])
    ensemble = EnsembleTask([one, two], tta="flip")
    x = torch.randn(2, 3, 32, 32)
    probs = ensemble.probabilities([x, x])
    assert torch.allclose(probs, torch.tensor([[0.35, 0.55, 0.10]] * 2), atol=1e-6)
    assert torch.equal(average_probabilities([torch.eye(2), torch.zeros(2, 2)]), torch.eye(2) / 2)
    # Test metrics come from the average: member one alone would call class a, the ensemble calls b.
    ensemble.test_step(([x, x], torch.tensor([1, 1])), 0)
    assert ensemble.test_metrics["acc"].compute() == 1.0


def test_each_member_gets_its_own_view():
    seen = []

    class Probe(nn.Module):
        def __init__(self, task):
            super().__init__()
            self.task, self.class_names, self.hparams, self.kind = task, task.class_names, task.hparams, task.kind

        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return self.task(x)

    one, two = constant_task([0.5, 0.25, 0.25]), constant_task([0.5, 0.25, 0.25])
    EnsembleTask([Probe(one), Probe(two)]).probabilities([torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 48, 48)])
    assert seen == [(32, 32), (48, 48)]


def pixelwise(x: torch.Tensor) -> torch.Tensor:
    """A segmentation 'model' that labels each pixel from its own value: flipping commutes with it."""
    return torch.cat([x[:, :1] * 4, -x[:, :1] * 4], dim=1)


def test_flip_tta_undoes_the_flip_on_masks():
    x = torch.zeros(1, 3, 8, 8)
    x[..., :3] = 1.0  # an object on the left only
    plain = tta_probabilities(pixelwise, x, "none", flips=True, segmentation=True)
    flipped = tta_probabilities(pixelwise, x, "flip", flips=True, segmentation=True)
    assert torch.allclose(flipped, plain)  # mirrored back: the object stays on the left
    assert (flipped[0, 0, :, :3] > 0.9).all() and (flipped[0, 0, :, 3:] == 0.5).all()


def test_flip_tta_averages_the_mirror_for_classification_and_skips_unflipped_models():
    def left_heavy(x):  # class 0 when the left half is brighter
        left, right = x[..., : x.shape[-1] // 2].mean((1, 2, 3)), x[..., x.shape[-1] // 2:].mean((1, 2, 3))
        return torch.stack([left - right, right - left], dim=1)

    x = torch.zeros(1, 3, 8, 8)
    x[..., :4] = 1.0
    p, q = torch.softmax(left_heavy(x), 1), torch.softmax(left_heavy(x.flip(-1)), 1)
    assert torch.allclose(tta_probabilities(left_heavy, x, "flip", True, False), (p + q) / 2)
    assert torch.allclose(tta_probabilities(left_heavy, x, "flip", False, False), p)


def test_multiscale_sizes_and_views():
    assert multiscale_sizes(224) == [196, 224, 252]
    assert multiscale_sizes(32) == [28, 32, 36]
    assert multiscale_sizes(48) == [42, 48, 54]
    sizes = []

    def record(x):
        sizes.append(tuple(x.shape[-2:]))
        return pixelwise(x)

    out = tta_probabilities(record, torch.rand(2, 3, 48, 48), "multiscale", flips=False, segmentation=True)
    assert sizes == [(42, 42), (48, 48), (54, 54)] and out.shape == (2, 2, 48, 48)
    assert torch.allclose(out.sum(1), torch.ones(2, 48, 48))
    with pytest.raises(ConfigError, match="tta='mirror' is unknown"):
        check_tta("mirror")


def test_members_with_other_classes_are_refused_naming_them(tmp_path):
    a = save_checkpoint(constant_task([0.5, 0.25, 0.25]), tmp_path / "a" / "checkpoints" / "best.ckpt")
    b = save_checkpoint(constant_task([0.5, 0.5], classes=("a", "b")), tmp_path / "b" / "checkpoints" / "best.ckpt")
    with pytest.raises(ConfigError, match=r"b/checkpoints/best.ckpt.* has classes \['a', 'b'\] but .*a/checkpoints"):
        load_ensemble([str(a), str(b)])


def test_checkpoint_paths_expand_cv_and_fit_run_directories(tmp_path):
    task = constant_task([0.5, 0.25, 0.25])
    folds = [save_checkpoint(task, tmp_path / "cv" / "folds" / str(k) / "checkpoints" / "best.ckpt")
             for k in (0, 1, 10, 2)]
    fit = save_checkpoint(task, tmp_path / "fit" / "checkpoints" / "best.ckpt")
    assert checkpoint_paths(str(tmp_path / "cv")) == [folds[0], folds[1], folds[3], folds[2]]
    assert checkpoint_paths([str(tmp_path / "fit"), str(fit)]) == [fit, fit]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoints/best.ckpt"):
        checkpoint_paths(str(tmp_path / "empty"))
    ensemble, paths = load_ensemble(str(tmp_path / "cv"), "flip")
    assert len(ensemble.members) == 4 and ensemble.tta == ["flip"] * 4


def test_members_that_a_view_does_not_suit_predict_without_it(tmp_path, caplog):
    flipped = save_checkpoint(constant_task([0.5, 0.25, 0.25]), tmp_path / "a" / "checkpoints" / "best.ckpt")
    digits = save_checkpoint(constant_task([0.5, 0.25, 0.25], data={**DATA, "flips": False}),
                             tmp_path / "b" / "checkpoints" / "best.ckpt")
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        ensemble, _ = load_ensemble([str(flipped), str(digits)], "flip")
    assert ensemble.tta == ["flip", "none"]
    assert "tta=flip: " + str(digits) + " trained without flips" in caplog.text and str(flipped) not in caplog.text
    assert load_ensemble([str(flipped), str(digits)], "multiscale")[0].tta == ["multiscale"] * 2


def test_flips_record_old_checkpoints_fall_back_to_the_run_config(tmp_path, caplog):
    old = {k: v for k, v in DATA.items() if k != "flips"}
    task = constant_task([0.5, 0.25, 0.25], data=old)
    assert trained_flips(constant_task([0.5, 0.25, 0.25], data={**DATA, "flips": False}), tmp_path / "x.ckpt") is False
    ckpt = save_checkpoint(task, tmp_path / "run" / "checkpoints" / "best.ckpt")
    with caplog.at_level(logging.INFO, logger="transferkit"):
        assert trained_flips(task, tmp_path / "elsewhere.ckpt") is False  # no config: never mirror
        (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"augment": {"name": "light", "flips": True}}))
        assert trained_flips(task, ckpt) is True
        (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"augment": {"name": "light", "flips": False}}))
        assert trained_flips(task, ckpt) is False
    assert "records no augment.flips" in caplog.text and "predates the flips record" in caplog.text


@pytest.mark.parametrize(("overrides", "flips"), [
    (["recipe=small_similar"], False),       # augment=none: no flip in the pipeline
    (["recipe=large_similar"], False),       # augment.flips=false (digits)
    (["augment=light"], True),
    (["recipe=fcn32s", "augment=light"], True),  # segmentation flips whenever its pipeline does
])
def test_checkpoints_record_whether_training_flipped(overrides, flips):
    from transferkit.cli.app import compose_config
    from transferkit.planning.plan import plan_spec
    from transferkit.training.builders import data_config

    spec = plan_spec(compose_config(overrides), "fit", load_weights=False)
    assert data_config(spec)["flips"] is flips
