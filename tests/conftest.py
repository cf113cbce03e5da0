"""Shared fixtures: tiny image folders in tmp_path and CLI overrides for fast CPU runs."""

from __future__ import annotations

import os
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: a folder named gpu matches it
            item.add_marker(skip)


def write_class_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 32,
                       splits: tuple[str, ...] | None = None, seed: int = 0) -> Path:
    """<root>/<class>/<i>.png (or <root>/<split>/<class>/...) with class-dependent colours."""
    rng = np.random.default_rng(seed)
    for split, (label, name), i in product(splits or ("",), enumerate(classes), range(per_class)):
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        pixels[..., label % 3] += 150  # a learnable signal: the dominant channel
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def write_segmentation_folder(root: Path, shape: tuple[int, int] = (16, 16), suffix: str = ".png",
                              count: int = 10, classes: int = 3) -> Path:
    """<root>/images/<i><suffix> (random RGB) and <root>/masks/<i>.png (random class indices)."""
    from transferkit.data.masks import write_index_png

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(root / "images" / f"{i}{suffix}")
        write_index_png(rng.integers(0, classes, shape), root / "masks" / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_class_folder(tmp_path / "images")


def write_timm_weights(path: Path, backbone: str = "test_resnet", seed: int = 0) -> Path:
    """A local weights file in timm's layout (what `torch.save(model.state_dict())` would give)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(backbone, pretrained=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def test_resnet_weights(tmp_path_factory) -> Path:
    """"Pretrained" test_resnet weights in a local file (no download): a seeded random init."""
    return write_timm_weights(tmp_path_factory.mktemp("weights") / "test_resnet.safetensors")


@pytest.fixture
def fast(tmp_path: Path, test_resnet_weights: Path) -> list[str]:
    """Overrides that make any recipe a seconds-long CPU run writing into tmp_path."""
    return [
        "model.backbone=test_resnet", f"model.weights={test_resnet_weights}", "model.in_chans=3",
        "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        f"run_dir={tmp_path / 'run'}",
    ]


PROBE = Path(__file__).with_name("ddp_probe.py")


def fit_two_process_ddp(image_folder: Path, weights: Path, cwd: Path, *overrides: str, timeout: int = 300,
                        probe_dir: Path | None = None):
    """`python -m transferkit fit` on `image_folder` as a 2-process CPU DDP run (a subprocess: Lightning
    re-launches argv); asserts it succeeded and returns the finished process. With `probe_dir`, each
    rank writes what it evaluated and its weights' checksum there (tests/ddp_probe.py)."""
    import subprocess
    import sys

    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFERKIT_RUN_DIR", None)
    launcher = [sys.executable, "-m", "transferkit"]
    if probe_dir is not None:
        launcher, env["TRANSFERKIT_PROBE_DIR"] = [sys.executable, str(PROBE)], str(probe_dir)
    cmd = [*launcher, "fit", f"data.root={image_folder}", "model.backbone=test_resnet",
           f"model.weights={weights}", "data.image_size=32", "data.batch_size=2", "data.num_workers=0",
           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", *overrides]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
