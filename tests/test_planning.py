"""Planning: which model `auto` means, the input format, fine-tuning rules, a final spec."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import pytest

from transferkit.cli.app import compose_config
from transferkit.errors import ConfigError
from transferkit.models.input_format import InputFormat
from transferkit.planning.spec import RunSpec
from transferkit.runtime.format import FORMAT_VERSION
from transferkit.training.builders import build_datamodule
from transferkit.planning.model import choose_input_format, choose_model
from transferkit.planning.plan import RunPlan, plan_spec, plan_training

NATIVE = InputFormat(3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", "timm:x")
AUTO_INPUT = {"in_chans": "auto", "image_size": "auto", "mean": "auto", "std": "auto", "interpolation": "auto"}


@pytest.mark.parametrize("backbone, weights, embedded, expected", [
    ("auto", "auto", True, ("resnet10t", "charnet")),      # the offline demo
    ("auto", "auto", False, ("resnet50", "hub")),          # a user's folder
    ("auto", "charnet", False, ("resnet10t", "charnet")),  # a house name implies its architecture
    ("resnet18", "auto", True, ("resnet18", "hub")),       # a chosen model keeps its own weights
    ("auto", "none", True, ("resnet10t", "none")),         # scratch, in the demo's format
    ("convnext_tiny", "none", False, ("convnext_tiny", "none")),
])
def test_choose_model(backbone, weights, embedded, expected):
    choice = choose_model(backbone, weights, embedded=embedded)
    assert (choice.backbone, choice.weights) == expected
    if expected[0] == "resnet10t":
        assert choice.format_record["in_chans"] == 1 and choice.format_record["image_size"] == 32


def test_house_weights_with_another_architecture_name_the_keys():
    with pytest.raises(ConfigError, match="model.weights='charnet' is a 'resnet10t'.*model.backbone='resnet18'"):
        choose_model("resnet18", "charnet", embedded=False)


def test_file_without_record_needs_an_architecture(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match="model=<catalogue option> or model.backbone"):
        choose_model("auto", str(path), embedded=False)


def test_input_format_user_beats_data_beats_weights():
    fmt, warnings = choose_input_format(NATIVE, AUTO_INPUT, {})
    assert (fmt.in_chans, fmt.image_size, fmt.interpolation) == (3, 224, "bicubic") and not warnings
    fmt, _ = choose_input_format(NATIVE, AUTO_INPUT, {"in_chans": 3, "image_size": 48})
    assert fmt.image_size == 48
    fmt, _ = choose_input_format(NATIVE, {**AUTO_INPUT, "image_size": 160, "in_chans": 1}, {"image_size": 48})
    assert (fmt.image_size, fmt.in_chans) == (160, 1) and fmt.mean == pytest.approx((0.449,), abs=1e-3)
    fmt, warnings = choose_input_format(NATIVE, {**AUTO_INPUT, "image_size": 64}, {})
    assert fmt.image_size == 64 and "below half" in warnings[0] and "data.image_size=auto" in warnings[0]
    with pytest.raises(ConfigError, match="data.interpolation='cubic'"):
        choose_input_format(NATIVE, {**AUTO_INPUT, "interpolation": "cubic"}, {})
    for key, name in (("image_size", "data.image_size"), ("in_chans", "model.in_chans")):
        with pytest.raises(ConfigError, match=rf"{name}=-5 must be >= 1"):
            choose_input_format(NATIVE, {**AUTO_INPUT, key: -5}, {})


def test_catalogue_model_on_a_folder_takes_its_native_format(image_folder, tmp_path):
    from tests.conftest import write_timm_weights

    weights = write_timm_weights(tmp_path / "r18.safetensors", "resnet18")
    spec = plan_spec(compose_config(["recipe=small_similar", "model=resnet18", f"model.weights={weights}",
                                     f"data.root={image_folder}"]), "fit")
    fmt = spec.model.input
    assert (spec.model.backbone, fmt.in_chans, fmt.image_size) == ("resnet18", 3, 224)
    assert (spec.model.options["in_chans"], spec.data.image_size) == (3, 224)
    assert list(spec.data.get("mean")) == pytest.approx([0.485, 0.456, 0.406]) and fmt.interpolation == "bicubic"
    assert spec.model.weights.kind == "file" and spec.model.options["weights"] == str(weights.resolve())


def test_the_planned_spec_is_final_and_round_trips(image_folder, fast):
    plan = RunPlan(compose_config([f"data.root={image_folder}", *fast]), "fit")
    spec = plan.spec
    assert spec.finetune.options["cache_features"] in (True, False) and plan.datamodule.class_names
    with pytest.raises(FrozenInstanceError):
        spec.seed = 1
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.to_dict()["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("strategy", ["freeze", "partial"])
def test_no_head_on_random_frozen_features(image_folder, fast, strategy):
    spec = plan_spec(compose_config([f"data.root={image_folder}", *fast, "model.weights=none",
                                     f"finetune={strategy}"]), "fit")
    with pytest.raises(ConfigError, match=f"finetune.strategy='{strategy}' with model.weights=none"):
        plan_training(spec, build_datamodule(spec.data, spec.model.input.in_chans))


def test_auto_without_weights_plans_scratch(image_folder, fast):
    spec = plan_spec(compose_config([f"data.root={image_folder}", *fast, "model.weights=none", "finetune=auto"]), "fit")
    datamodule = build_datamodule(spec.data, spec.model.input.in_chans)
    datamodule.scan()
    spec = plan_training(spec, datamodule)
    assert spec.finetune.strategy == "full" and spec.finetune.advice is None and spec.finetune.race is None
    assert any("training from scratch" in note for note in spec.notes)


def test_auto_on_segmentation_stops_before_training(fast):
    spec = plan_spec(compose_config(["recipe=fcn32s", *fast, "finetune=auto"]), "fit")
    with pytest.raises(ConfigError, match="finetune=freeze\\|partial\\|full"):
        plan_training(spec, None)


@pytest.mark.parametrize("override, match", [
    ("optimizer.fused=true", "torch has no fused rmsprop"),   # with optimizer=rmsprop below
    ("optimizer.lr=-1", "optimizer.lr=-1 must be > 0"),
    ("+optimizer.foo=1", "optimizer.foo is not an option"),
])
def test_bad_optimizer_values_stop_even_a_solved_head_plan(override, match):
    """The default recipe solves its head with L-BFGS and never builds the optimizer: its values are
    still checked before anything runs."""
    spec = plan_spec(compose_config(["recipe=small_similar", "optimizer=rmsprop", override]), "fit")
    with pytest.raises(ConfigError, match=match):
        plan_training(spec, None)


def test_optimizer_lr_find_is_left_to_the_range_test():
    from transferkit.tasks.optim import check_optimizer_group

    check_optimizer_group({"name": "adamw", "lr": "find"}, lr_searched=True)  # the range test sets it
    with pytest.raises(ConfigError, match="optimizer.eps=0"):
        check_optimizer_group({"name": "adamw", "lr": "find", "eps": 0}, lr_searched=True)


@pytest.mark.parametrize("recipe,layout", [("small_similar", "<root>/<class>/<image>"), ("fcn8s", "<root>/images/")])
def test_a_missing_folder_is_named_before_any_weights_are_looked_for(tmp_path, recipe, layout):
    """model=auto on a folder wants hub weights, which this machine cannot fetch: the folder comes first."""
    (tmp_path / "a_file.png").write_bytes(b"")
    for root, problem in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "a_file.png", "is a file, not a folder")):
        cfg = compose_config([f"recipe={recipe}", f"data.root={root}", "model=auto"])
        with pytest.raises(OSError, match=rf"data.root='{root}' {problem}\. Expected {layout}"):
            plan_spec(cfg, "fit")
