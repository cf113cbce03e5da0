"""GPU speed knobs on CPU: channels last, compile (mocked), num_workers=auto, synthetic data, and the
on-device decode/augment path (its parameter draws against albumentations, its resize against OpenCV)."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from transferkit.data.device_augment import DeviceAugment, resized_crops, sample_resized_crop
from transferkit.data.loader_settings import choose_num_workers, loader_settings
from transferkit.errors import ConfigError


def tiny_task(**model):
    from transferkit.tasks.classification import ClassificationTask

    return ClassificationTask(num_classes=3, model={"backbone": "test_resnet", **model},
                              finetune={"strategy": "full"})


def test_channels_last_sets_memory_format_of_weights_and_inputs():
    task = tiny_task(channels_last=True)
    convs = [m.weight for m in task.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.randn(2, 3, 32, 32)
    assert task.prepare_input(x).is_contiguous(memory_format=torch.channels_last)
    assert task(x).shape == (2, 3)
    plain = tiny_task()
    assert not plain.prepare_input(x).is_contiguous(memory_format=torch.channels_last) or x.shape[1] == 1


def test_compile_happens_once_at_setup_with_the_mode(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    task = tiny_task(compile=True, compile_mode="max-autotune")
    assert calls == []  # building (and loading, exporting) never compiles
    task.setup("fit")
    task.setup("test")
    assert calls == [(type(task.encoder).__name__, {"mode": "max-autotune", "dynamic": False})]


def test_a_short_last_batch_does_not_move_full_batches_to_a_dynamic_graph(monkeypatch):
    """Under torch's default, the graph compiled for an epoch's short last batch is made for any batch
    size and then serves the full batches of later epochs; `apply_compile` keeps one graph per shape."""
    from transferkit.models.speed import apply_compile

    graphs: list[dict] = []

    def recording_backend(gm, example_inputs):
        sizes = [d for x in example_inputs for d in (getattr(x, "shape", None) or [x])]
        record = {"dynamic": any(isinstance(d, torch.SymInt) for d in sizes), "calls": 0}
        graphs.append(record)

        def run(*args):
            record["calls"] += 1
            return gm(*args)
        return run

    real_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, mode=None, **kw: real_compile(self, backend=recording_backend, **kw))
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2))
    apply_compile(model)
    for _epoch in range(2):
        for batch in (8, 8, 5):  # two full batches and a short last one
            model(torch.randn(batch, 3, 8, 8)).sum().backward()
    torch._dynamo.reset()
    assert [g["dynamic"] for g in graphs] == [False, False]
    assert [g["calls"] for g in graphs] == [4, 2]  # the full batches of both epochs ran the 8-image graph


def test_bad_compile_mode_names_the_key():
    with pytest.raises(ConfigError, match="model.compile_mode"):
        tiny_task(compile=True, compile_mode="fastest")


@pytest.mark.parametrize(("requested", "on_gpu", "cpus", "devices", "expected"), [
    ("auto", False, 16, 1, 2), ("auto", False, 2, 1, 2), ("auto", True, 16, 1, 15), ("auto", True, 16, 2, 7),
    ("auto", True, 1, 1, 1), (0, True, 16, 1, 0), (4, False, 2, 1, 4)])
def test_num_workers(requested, on_gpu, cpus, devices, expected):
    assert choose_num_workers(requested, on_gpu, cpus, devices) == expected


@pytest.mark.parametrize("bad", [-1, "many", 1.5, True])
def test_bad_num_workers_names_the_key(bad):
    with pytest.raises(ConfigError, match="data.num_workers"):
        choose_num_workers(bad, on_gpu=False, cpus=2)


def test_cpu_loaders_are_not_pinned():
    assert loader_settings("auto", None) == {"num_workers": 2, "pin_memory": False, "persistent_workers": True}
    assert loader_settings(0, None)["persistent_workers"] is False


def synthetic_datamodule(**kwargs):
    from transferkit.data.datamodule import ClassificationDataModule

    options = {"embedded": "synthetic", "image_size": 16, "batch_size": 4, "embedded_length": 10,
               "synthetic_classes": 5, "val_fraction": 0.2, "test_fraction": 0.2, **kwargs}
    datamodule = ClassificationDataModule(**options)
    datamodule.scan()
    return datamodule


def test_synthetic_data_yields_whole_batches_without_workers():
    datamodule = synthetic_datamodule()
    assert datamodule.sizes() == {"train": 10, "val": 2, "test": 2}
    assert datamodule.class_names == [f"class_{i}" for i in range(5)]
    loader = datamodule.val_dataloader()
    assert loader.num_workers == 0
    images, labels = next(iter(loader))
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert labels.tolist() == datamodule.labels("val").tolist()
    train = [y for _, y in datamodule.train_dataloader()]
    assert sorted(torch.cat(train).tolist()) == sorted(datamodule.labels("train").tolist())


def test_synthetic_features_extract_in_order():
    from transferkit.data.feature_store import extract_features

    datamodule = synthetic_datamodule()
    source = datamodule.val_dataloader().dataset
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    features, labels = extract_features(encoder, source, lambda n, d: np.zeros((n, d), np.float32), 2)
    assert features.shape == (2, 4) and labels.tolist() == datamodule.labels("val").tolist()


def test_decode_is_checked_at_construction():
    from transferkit.data.datamodule import ClassificationDataModule

    with pytest.raises(ValueError, match="data.decode"):
        ClassificationDataModule(decode="nvdec")


@pytest.mark.parametrize("shape", [(300, 400), (500, 260), (40, 400), (64, 64)])
def test_crop_draws_match_albumentations(shape):
    import albumentations as A

    from transferkit.data.transforms import CROP_RATIO, LIGHT_CROP_SCALE

    transform = A.RandomResizedCrop((32, 32), scale=LIGHT_CROP_SCALE, ratio=CROP_RATIO)
    for seed in range(50):
        transform.py_random = random.Random(seed)
        x_min, y_min, x_max, y_max = transform.get_params_dependent_on_data({"shape": (*shape, 3)}, {})["crop_coords"]
        assert sample_resized_crop(*shape, LIGHT_CROP_SCALE, CROP_RATIO, random.Random(seed)) == (
            y_min, x_min, y_max - y_min, x_max - x_min)


def test_flip_probability_and_eval_resize():
    train = DeviceAugment("light", True, 32, (0.5,), (0.5,))
    crops, flips = train.draw([(100, 120)] * 2000, random.Random(0))
    assert 0.45 < np.mean(flips) < 0.55
    assert all(0.7 * 12000 * 0.9 <= h * w <= 12000 * 1.01 for _, _, h, w in crops)
    evaluate = DeviceAugment("light", False, 32, (0.5,), (0.5,))
    assert evaluate.draw([(100, 120)], random.Random(0)) == ([(0, 0, 100, 120)], [False])
    no_flips = DeviceAugment("light", True, 32, (0.5,), (0.5,), flips=False)
    assert not any(no_flips.draw([(50, 50)] * 100, random.Random(0))[1])


def test_device_augment_refuses_recipes_it_cannot_run():
    with pytest.raises(ConfigError, match="data.decode=gpu"):
        DeviceAugment("strong", True, 32, (0.5,), (0.5,))
    with pytest.raises(ConfigError, match="data.interpolation"):
        DeviceAugment("none", False, 32, (0.5,), (0.5,), interpolation="area")


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def test_resized_crops_match_opencv_crop_and_resize():
    a, b = smooth_image(90, 120), smooth_image(70, 50, seed=1)
    images = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in (a, b)]
    crops, flips = [(10, 20, 60, 80), (0, 0, 70, 50)], [False, True]
    out = resized_crops(images, crops, flips, 32, "bilinear", (0.0,) * 3, (1 / 255,) * 3)
    assert out.shape == (2, 3, 32, 32)
    want_a = cv2.resize(a[10:70, 20:100], (32, 32), interpolation=cv2.INTER_LINEAR)
    want_b = cv2.resize(b, (32, 32), interpolation=cv2.INTER_LINEAR)[:, ::-1]
    for got, want in zip(out, (want_a, want_b)):
        assert np.abs(got.permute(1, 2, 0).numpy() - want.astype(np.float32)).max() < 3.0


def test_resized_crops_normalise_like_the_cpu_recipe():
    image = torch.full((3, 20, 20), 255, dtype=torch.uint8)
    out = resized_crops([image], [(0, 0, 20, 20)], [False], 8, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.allclose(out, torch.full_like(out, 2.0))


@pytest.fixture
def jpeg_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "jpegs" / label).mkdir(parents=True)
        for i in range(6):
            size = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
            image = smooth_image(*size, seed=i)
            image[..., 0 if label == "a" else 2] = 250
            cv2.imwrite(str(tmp_path / "jpegs" / label / f"{i}.jpg"), image)
        cv2.imwrite(str(tmp_path / "jpegs" / label / "extra.png"), smooth_image(40, 40))  # not a JPEG
    return tmp_path / "jpegs"


def test_device_decode_loader_yields_augmented_batches(jpeg_folder):
    from transferkit.data.datamodule import ClassificationDataModule

    datamodule = ClassificationDataModule(root=str(jpeg_folder), decode="gpu", image_size=24, batch_size=4,
                                          num_workers=0, val_fraction=0.2, test_fraction=0.2, mean=(0.5,),
                                          std=(0.5,))
    datamodule.scan()
    loader = datamodule.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    assert sum(len(y) for _, y in batches) == datamodule.sizes()["train"]
    images, labels = batches[0]
    assert images.shape[1:] == (3, 24, 24) and images.dtype == torch.float32
    assert -1.01 <= float(images.min()) and float(images.max()) <= 1.01
    val = torch.cat([x for x, _ in datamodule.val_dataloader()])
    val_again = torch.cat([x for x, _ in datamodule.val_dataloader()])
    assert torch.equal(val, val_again)  # eval: resize only, no random draw


@pytest.mark.slow
def test_fit_with_device_decode_and_synthetic_data(jpeg_folder, tmp_path, fast):
    from transferkit.cli import app as cli
    overrides = [o for o in fast if not o.startswith("run_dir")]
    results = cli.run(["fit", *overrides, f"data.root={jpeg_folder}", "data.decode=gpu", "finetune=full",
                       "finetune.lpft=false", "model.channels_last=true", f"run_dir={tmp_path / 'decode'}"])
    assert results["status"] == "completed" and results["feature_cache"]["used"] is False
    assert (tmp_path / "decode" / "report.html").is_file()  # test images shown through the CPU eval pipeline
    results = cli.run(["fit", *overrides, "data.embedded=synthetic", "data.embedded_length=16",
                       "data.synthetic_classes=4", "finetune=full", f"run_dir={tmp_path / 'synthetic'}"])
    assert results["status"] == "completed" and results["data"]["num_classes"] == 4


def test_device_decode_refuses_features_read_before_training():
    from transferkit.planning.finetune import check_device_decode

    with pytest.raises(ConfigError, match="data.decode=gpu"):
        check_device_decode("gpu", {"strategy": "freeze", "head_solver": "lbfgs"})
    check_device_decode("gpu", {"strategy": "full"})


# -- on a CUDA device (skipped without one) -------------------------------------------------------
@pytest.mark.gpu
def test_synthetic_batches_are_born_on_the_gpu():
    from transferkit.data.embedded.synthetic import SyntheticImages

    data = SyntheticImages(64, 32, 3, 10, seed=0).to_device("cuda")
    images, labels = data.__getitems__(list(range(8)))
    assert images.is_cuda and labels.is_cuda and images.shape == (8, 3, 32, 32)


@pytest.mark.gpu
def test_nvjpeg_decode_and_augment_on_the_gpu(jpeg_folder):
    from transferkit.data.device_decode import EncodedImages, decode_images

    dataset = EncodedImages(sorted((p, 0) for p in jpeg_folder.rglob("*.*")))
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    images = decode_images(batch, torch.device("cuda"))
    assert all(im.is_cuda and im.shape[0] == 3 for im in images)
    out = DeviceAugment("light", True, 24, (0.5,), (0.5,))(images, random.Random(0))
    assert out.is_cuda and out.shape == (len(images), 3, 24, 24)


@pytest.mark.gpu
def test_bf16_channels_last_fit_on_gpu(tmp_path, fast):
    from transferkit.cli import app as cli
    overrides = [o for o in fast if not o.startswith(("run_dir", "trainer.accelerator"))]
    results = cli.run(["fit", *overrides, "trainer.accelerator=gpu", "trainer.precision=bf16-mixed",
                       "model.channels_last=true", "data.embedded=synthetic", "data.embedded_length=64",
                       "finetune=full", f"run_dir={tmp_path / 'gpu'}"])
    assert results["status"] == "completed"


@pytest.mark.gpu
def test_frozen_features_are_computed_and_served_on_the_gpu(tmp_path, fast):
    from transferkit.cli import app as cli
    overrides = [o for o in fast if not o.startswith(("run_dir", "trainer.accelerator"))]
    results = cli.run(["fit", *overrides, "trainer.accelerator=gpu", "trainer.precision=bf16-mixed",
                       "model.channels_last=true", "data.embedded=synthetic", "data.embedded_length=64",
                       "finetune=freeze", "finetune.head_solver=sgd", "finetune.cache_features=true",
                       "augment=none", "trainer.max_epochs=2", f"run_dir={tmp_path / 'frozen'}"])
    loaders = results["feature_cache"]["loaders"]
    assert results["status"] == "completed" and results["feature_cache"]["used"]
    assert {loaders[s]["served_from"] for s in ("train", "val", "test")} == {"cuda:0"}


def test_grey_models_get_grey_batches():
    image = torch.zeros((3, 10, 10), dtype=torch.uint8)
    image[0] = 90
    out = DeviceAugment("none", False, 8, (0.0,), (1 / 255,), in_chans=1)([image], random.Random(0))
    assert out.shape == (1, 1, 8, 8) and torch.allclose(out, torch.full_like(out, 30.0))
