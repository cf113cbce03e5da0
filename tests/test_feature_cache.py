"""Feature cache: when it is valid, its invalidation key, and fits that match the uncached path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import fit_two_process_ddp
from transferkit.cli import app as cli
from transferkit.data.datamodule import ClassificationDataModule
from transferkit.data.decode import load_image
from transferkit.data.sources import FileSource, TransformedDataset
from transferkit.data.transforms import build_transforms
from transferkit.errors import ConfigError
from transferkit.data.feature_cache import (
    FeatureCacheDataModule,
    cache_blockers,
    cache_key,
    choose_feature_cache,
)
from transferkit.data.feature_store import FeatureStore, extract_features
from transferkit.models.backbones import create_backbone
from transferkit.tasks.classification import ClassificationTask

VALID = {"task_kind": "classification", "strategy": "freeze", "unfreeze_at_epoch": None, "augment": "none"}


# -- deciding ------------------------------------------------------------------------------------
def test_valid_case_has_no_blockers_and_caches_by_default():
    assert cache_blockers(**VALID) == []
    assert choose_feature_cache(None, []) is True
    assert choose_feature_cache(True, []) is True
    assert choose_feature_cache(False, []) is False


@pytest.mark.parametrize("change, key", [
    ({"augment": "light"}, "augment.name='light'"),
    ({"augment": "cifar"}, "augment.name='cifar'"),
    ({"strategy": "partial"}, "finetune.strategy='partial'"),
    ({"strategy": "full"}, "finetune.strategy='full'"),
    ({"strategy": "partial", "unfreeze_at_epoch": 2}, "finetune.unfreeze_at_epoch=2"),
    ({"mixup_alpha": 0.2}, "augment.mixup_alpha=0.2"),
    ({"drop_path_rate": 0.1}, "model.drop_path_rate=0.1"),
    ({"task_kind": "segmentation"}, "task.kind='segmentation'"),
])
def test_invalid_cases_turn_the_automatic_cache_off(change, key):
    blockers = cache_blockers(**{**VALID, **change})
    assert any(key in reason for reason in blockers), blockers
    assert choose_feature_cache(None, blockers) is False
    assert choose_feature_cache(False, blockers) is False


def test_explicit_true_where_invalid_says_why_and_what_to_change():
    blockers = cache_blockers(**{**VALID, "augment": "light"})
    with pytest.raises(ConfigError, match="finetune.cache_features=True") as err:
        choose_feature_cache(True, blockers)
    message = str(err.value)
    assert "augment.name='light'" in message and "use augment=none" in message
    assert "finetune.cache_features=null" in message
    with pytest.raises(ConfigError, match="finetune.cache_features='yes'"):
        choose_feature_cache("yes", [])


def test_fast_dev_run_turns_only_the_automatic_cache_off():
    assert choose_feature_cache(None, [], wasteful="fast_dev_run") is False
    assert choose_feature_cache(True, [], wasteful="fast_dev_run") is True


# -- invalidation key ----------------------------------------------------------------------------
def _dataset(image_folder: Path, image_size: int = 32, name: str = "none", train: bool = True,
             split: str = "train") -> TransformedDataset:
    items = [(p, 0 if p.parent.name == "cat" else 1) for p in sorted(image_folder.rglob("*.png"))]
    items = items[:8] if split == "train" else items[8:]
    transform = build_transforms(name, train=train, image_size=image_size, mean=(0.5,), std=(0.5,))
    return TransformedDataset(FileSource(items), transform)


def _key(dataset: TransformedDataset, encoder: torch.nn.Module) -> str:
    return cache_key(dataset, dataset.transform, encoder, "test_resnet", "folder", 32, 3)


def test_key_changes_with_encoder_weights_transform_split_and_files(image_folder):
    encoder = create_backbone("test_resnet", in_chans=3)
    base = _key(_dataset(image_folder), encoder)
    assert _key(_dataset(image_folder), encoder) == base  # stable
    assert _key(_dataset(image_folder, split="val"), encoder) != base
    assert _key(_dataset(image_folder, image_size=40), encoder) != base
    assert _key(_dataset(image_folder, name="cifar", train=False), encoder) != base
    with torch.no_grad():
        next(encoder.parameters())[0].add_(1e-3)
    assert _key(_dataset(image_folder), encoder) != base
    changed = _key(_dataset(image_folder), encoder)
    first = sorted(image_folder.rglob("*.png"))[0]
    Image.fromarray(np.zeros((32, 40, 3), dtype=np.uint8)).save(first)
    assert _key(_dataset(image_folder), encoder) != changed


# -- computing, storing, serving -----------------------------------------------------------------
def test_features_equal_the_eval_mode_encoder_and_modes_are_restored(image_folder):
    encoder = create_backbone("test_resnet", in_chans=3).train()
    dataset = _dataset(image_folder)
    features, labels = extract_features(encoder, dataset, lambda n, d: np.empty((n, d), np.float32), 3)
    assert encoder.training and all(m.training for m in encoder.modules())
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        expected = encoder.eval()(images)
    assert features.shape == (8, encoder.num_features)
    torch.testing.assert_close(torch.from_numpy(features), expected, rtol=1e-5, atol=1e-5)
    assert labels.tolist() == [dataset[i][1] for i in range(len(dataset))]


def test_chunked_host_copies_give_the_same_features_and_labels(image_folder, monkeypatch):
    """On a GPU the features are copied to the host in chunks; a chunk smaller than one batch and one
    larger than the set give the per-batch result, in order."""
    from transferkit.data import feature_store

    encoder = create_backbone("test_resnet", in_chans=3)
    dataset = _dataset(image_folder)
    plain = extract_features(encoder, dataset, lambda n, d: np.empty((n, d), np.float32), 3)
    real_sink = feature_store._HostSink
    for chunk in (1, 10**9):
        sink_outputs = []

        def sink(allocate, labels, chunk_bytes, chunk=chunk):
            made = real_sink(allocate, labels, chunk)
            sink_outputs.append(made)
            return made

        monkeypatch.setattr(feature_store, "_HostSink", sink)
        chunked = extract_features(encoder, dataset, lambda n, d: np.empty((n, d), np.float32), 3)
        np.testing.assert_array_equal(chunked[0], plain[0])
        assert chunked[1].tolist() == plain[1].tolist() and sink_outputs[0].start == len(dataset)


def test_features_are_served_from_the_gpu_only_when_they_fit():
    from transferkit.data.feature_cache import choose_feature_device

    gpu = torch.device("cuda", 0)
    assert choose_feature_device(10 * 2**30, gpu, 141 * 2**30) == gpu
    assert choose_feature_device(20 * 2**30, gpu, 141 * 2**30) is None  # above an eighth of its memory
    assert choose_feature_device(1, torch.device("cpu"), 0) is None
    assert choose_feature_device(1, None, 0) is None


def test_device_feature_batches_equal_the_host_batches():
    from transferkit.data.feature_store import FeatureDataset, FeatureSet

    rng = np.random.default_rng(0)
    feature_set = FeatureSet(rng.normal(size=(9, 4)).astype(np.float32), np.arange(9) % 3, "k", "memory")
    host, device = FeatureDataset(feature_set), FeatureDataset(feature_set, device=torch.device("cpu"))
    for batch in ([0, 5, 2], [8], list(range(9))):
        for got, want in zip(device.__getitems__(batch), host.__getitems__(batch)):
            torch.testing.assert_close(got, want)
    assert device.features is feature_set.features  # the host arrays stay (linear probe, race)


def test_store_spills_large_sets_to_disk_and_release_removes_them(image_folder, tmp_path):
    encoder = create_backbone("test_resnet", in_chans=3)
    dataset = _dataset(image_folder)
    in_memory = FeatureStore().get("k", lambda a: extract_features(encoder, dataset, a, 4))
    store = FeatureStore(spill_dir=tmp_path / "spill", memory_limit_bytes=0)
    spilled = store.get("k", lambda a: extract_features(encoder, dataset, a, 4))
    assert in_memory.location == "memory" and spilled.location.startswith(str(tmp_path / "spill"))
    assert isinstance(spilled.features, np.memmap)
    np.testing.assert_array_equal(np.asarray(spilled.features), in_memory.features)
    assert store.get("k", lambda a: pytest.fail("recomputed")).reused
    store.release()
    assert not list((tmp_path / "spill").iterdir())


def test_datamodule_wrapper_keeps_loader_order_sampler_and_reuses_by_key(image_folder):
    data = ClassificationDataModule(root=str(image_folder), image_size=32, batch_size=4, num_workers=0,
                                    augment="none", val_fraction=0.25, test_fraction=0.25)
    data.scan()
    encoder = create_backbone("test_resnet", in_chans=3)
    cached = FeatureCacheDataModule(data, encoder, "test_resnet", image_size=32, in_chans=3)
    plain, loader = data.val_dataloader(), cached.val_dataloader()
    assert (loader.batch_size, type(loader.sampler)) == (4, type(plain.sampler))
    assert type(cached.train_dataloader().sampler).__name__ == "RandomSampler"
    encoder.eval()
    with torch.no_grad():
        for (x, y), (f, fy) in zip(plain, loader):
            assert f.ndim == 2 and torch.equal(y, fy)
            torch.testing.assert_close(f, encoder(x), rtol=1e-5, atol=1e-5)
    assert cached.val_dataloader() is not None and cached.loaders["val"]["reused"]


# -- end to end ------------------------------------------------------------------------------------
def _fit(image_folder: Path, fast: list[str], run_dir: Path, *extra: str) -> dict:
    overrides = [f for f in fast if not f.startswith(("run_dir=", "trainer.max_epochs="))]
    # head_solver=sgd: these compare SGD epochs on cached features with epochs on images.
    return cli.run(["fit", f"data.root={image_folder}", *overrides, "augment=none", "finetune=freeze",
                    "finetune.head_solver=sgd", "trainer.max_epochs=3", "optimizer.lr=0.05", f"run_dir={run_dir}", *extra])


@pytest.mark.slow
def test_cached_fit_matches_uncached_and_its_checkpoint_predicts_images(image_folder, fast, tmp_path):
    cache_dir = tmp_path / "cache"
    cached = _fit(image_folder, fast, tmp_path / "cached", f"data.cache_dir={cache_dir}")
    plain = _fit(image_folder, fast, tmp_path / "plain", "finetune.cache_features=false")
    assert cached["feature_cache"]["used"] and not plain["feature_cache"]["used"]
    assert cached["feature_cache"]["loaders"]["train"]["items"] == cached["data"]["train_size"]
    saved = json.loads((tmp_path / "cached" / "results.json").read_text())
    assert saved["feature_cache"]["used"] is True
    for key, value in plain["metrics"].items():
        assert cached["metrics"][key] == pytest.approx(value, abs=1e-4), key

    # Same data, seed and (random-init) encoder: the disk cache is reused, not recomputed.
    again = _fit(image_folder, fast, tmp_path / "again", f"data.cache_dir={cache_dir}", "trainer.max_epochs=1")
    assert all(loader["reused"] for loader in again["feature_cache"]["loaders"].values())
    assert len(list((cache_dir / "features").glob("features-*.labels.npy"))) == 3

    # The checkpoint is a full model: `test` on images and `predict` agree with the cached run.
    best = cached["best_checkpoint"]
    tested = cli.run(["test", f"ckpt_path={best}", f"run_dir={tmp_path / 'test'}"])
    assert tested["metrics"]["test/acc"] == pytest.approx(cached["metrics"]["test/acc"])
    assert tested["metrics"]["test/loss"] == pytest.approx(cached["metrics"]["test/loss"], abs=1e-5)
    out = tmp_path / "preds.csv"
    cli.run(["predict", f"ckpt_path={best}", f"input={image_folder}", f"output={out}",
             f"run_dir={tmp_path / 'pred'}"])
    rows = {Path(r["path"]).resolve(): r for r in csv.DictReader(out.open())}
    task = ClassificationTask.load_from_checkpoint(best).eval()
    data = task.hparams.data_config
    transform = build_transforms("none", train=False, image_size=data["image_size"], mean=data["mean"],
                                 std=data["std"])
    paths = sorted(image_folder.rglob("*.png"))
    images = torch.stack([transform(image=load_image(p))["image"] for p in paths])
    with torch.no_grad():
        # predict divides by the calibration temperature fit stored in the checkpoint
        probs = torch.softmax(task.head(task.encoder(images)) / (task.temperature or 1.0), dim=-1)
    for path, p in zip(paths, probs):
        row = rows[path.resolve()]
        assert row["label"] == task.class_names[int(p.argmax())]
        assert float(row["probability"]) == pytest.approx(float(p.max()), abs=1e-4)


@pytest.mark.slow
def test_random_augmentation_fit_runs_uncached_and_explicit_true_fails_early(image_folder, fast, tmp_path):
    results = _fit(image_folder, fast, tmp_path / "light", "augment=light", "trainer.max_epochs=1")
    assert results["feature_cache"]["used"] is False
    assert any("augment.name='light'" in r for r in results["feature_cache"]["reasons"])
    with pytest.raises(ConfigError, match="finetune.cache_features=True"):
        _fit(image_folder, fast, tmp_path / "bad", "finetune=partial", "finetune.cache_features=true")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_two_process_cpu_ddp_trains_on_cached_features(image_folder, tmp_path, test_resnet_weights):
    fit_two_process_ddp(image_folder, test_resnet_weights, tmp_path, "augment=none", "trainer.max_epochs=2",
                        "trainer.enable_progress_bar=false", f"run_dir={tmp_path / 'ddp'}")
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["feature_cache"]["used"] is True
    assert results["feature_cache"]["loaders"]["train"]["items"] == results["data"]["train_size"]
    assert "test/acc" in results["metrics"]
    assert results["linear_probe"]["features"] == "feature cache"  # the default lbfgs head, solved per rank


def test_empty_split_gives_an_empty_feature_set():
    encoder = create_backbone("test_resnet", in_chans=3)
    empty = TransformedDataset(FileSource([]), build_transforms("none", True, 32, (0.5,), (0.5,)))
    feature_set = FeatureStore().get("e", lambda a: extract_features(encoder, empty, a, 4))
    assert feature_set.features.shape[0] == 0 and len(feature_set.labels) == 0
