"""Every classification recipe composes and runs one fast_dev_run step on a tiny folder."""

from __future__ import annotations

import pytest

from transferkit.cli import app as cli
QUADRANTS = {
    "small_similar": "freeze",
    "small_different": "partial",
    "large_similar": "full",
    "large_different": "full",
}


@pytest.mark.parametrize("recipe,strategy", sorted(QUADRANTS.items()))
def test_quadrant_recipe_encodes_its_strategy(recipe, strategy):
    cfg = cli.compose_config([f"recipe={recipe}"])
    assert cfg.finetune.strategy == strategy
    assert cfg.recipe == recipe


def classification_recipes() -> list[str]:
    return [name for name in cli.recipe_names()
            if cli.compose_config([f"recipe={name}"]).task.kind == "classification"]


@pytest.mark.parametrize("recipe", classification_recipes())
def test_recipe_smoke(recipe, image_folder, fast):
    results = cli.run(["fit", f"recipe={recipe}", f"data.root={image_folder}", *fast,
                       "trainer.fast_dev_run=true"])
    assert results["recipe"] == recipe
    assert results["data"]["class_names"] == ["cat", "dog"]
    assert 0.0 <= results["metrics"]["test/acc"] <= 1.0
