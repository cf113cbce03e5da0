"""`data.train_per_class`: a fixed, seeded few-shot draw of the train split, for embedded data and folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import write_class_folder

from transferkit.cli import app as cli
from transferkit.data.datamodule import ClassificationDataModule
from transferkit.errors import ConfigError


def digits(**kwargs) -> ClassificationDataModule:
    dm = ClassificationDataModule(embedded="digits", num_workers=0, batch_size=16, **kwargs)
    dm.scan()
    return dm


def test_embedded_digits_keep_n_per_class_and_leave_val_test_alone() -> None:
    full, few = digits(), digits(train_per_class=5, balance="sampler")
    assert few.sizes() == {**full.sizes(), "train": 50}
    assert np.bincount(few.labels("train")).tolist() == [5] * 10
    for split in ("val", "test"):
        assert np.array_equal(few.sources[split].images, full.sources[split].images)
    chosen = few.split_record["train_indices"]
    assert few.split_record["train_per_class"] == 5 and few.split_record["draw_seed"] == 0
    assert np.array_equal(few.sources["train"].images, full.sources["train"].images[chosen])
    assert sum(len(labels) for _, labels in few.train_dataloader()) == 50  # the sampler sees 50 images
    assert digits(train_per_class=5, balance="weights").class_weights() == [1.0] * 10


def test_draw_follows_draw_seed_not_seed() -> None:
    base = digits(train_per_class=3, seed=0).split_record["train_indices"]
    assert digits(train_per_class=3, seed=7).split_record["train_indices"] == base
    assert digits(train_per_class=3, draw_seed=1).split_record["train_indices"] != base
    assert "train_per_class" not in digits().split_record  # off: splits.json as before


@pytest.mark.parametrize("bad", [0, -1])
def test_n_below_one_names_the_key(bad: int) -> None:
    with pytest.raises(ConfigError, match=f"data.train_per_class={bad}"):
        ClassificationDataModule(embedded="digits", train_per_class=bad)


def test_folder_train_split_is_drawn_small_class_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_class_folder(tmp_path / "data", classes=("cat", "dog", "owl"), per_class=6, splits=("train", "val"))
    for path in sorted((root / "train" / "owl").iterdir())[2:]:
        path.unlink()

    def scan(seed: int, draw_seed: int = 0, cache: bool = False) -> ClassificationDataModule:
        dm = ClassificationDataModule(str(root), train_per_class=4, draw_seed=draw_seed, seed=seed, cache=cache,
                                      test_fraction=0.0, num_workers=0, batch_size=4)
        dm.scan()
        return dm

    with caplog.at_level(logging.WARNING):
        dm = scan(seed=0)
    assert "'owl' has 2 training image(s), fewer than data.train_per_class=4" in caplog.text
    assert dm.sizes() == {"train": 10, "val": 18, "test": 0}
    assert np.bincount(dm.labels("train")).tolist() == [4, 4, 2]
    train_paths = [path for path, _ in dm.split_record["splits"]["train"]]
    assert len(train_paths) == 10 and dm.split_record["counts"]["train"] == {"cat": 4, "dog": 4, "owl": 2}
    assert {p for p in train_paths if p.startswith("train/owl/")} == {"train/owl/0.png", "train/owl/1.png"}
    assert scan(seed=3).split_record["splits"] == dm.split_record["splits"]
    assert scan(seed=0, draw_seed=5).split_record["splits"]["train"] != dm.split_record["splits"]["train"]
    cached = scan(seed=0, cache=True)
    assert len(cached.sources["train"]) == 10 and cached.labels("train").tolist() == dm.labels("train").tolist()


@pytest.mark.slow
def test_config_exposes_the_keys_and_splits_json_records_the_draw(fast: list[str]) -> None:
    cfg = cli.compose_config([])
    assert cfg.data.train_per_class is None and cfg.data.draw_seed == 0
    results = cli.run(["fit", "data.embedded=digits", "data.train_per_class=2", "data.draw_seed=3", *fast,
                       "data.batch_size=64"])  # 540 val/test digits: fewer steps
    assert results["data"]["train_size"] == 20
    record = json.loads((Path(results["run_dir"]) / "splits.json").read_text())
    assert (record["train_per_class"], record["draw_seed"], len(record["train_indices"])) == (2, 3, 20)
