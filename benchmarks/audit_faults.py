"""The audit benchmark's data: scikit-learn's real handwritten digits as a train/val/test image folder,
with faults injected and recorded (imported by benchmarks/audit.py; nothing here downloads).

Faults, each drawn from its own seeded generator:
  * leaks: copies of val/test images filed into train (and of train images into test), one kind each:
    `exact` (the same file), `exact_format` (the same pixels as BMP), `resized` (x1.25 / x0.8),
    `jpeg` (re-encoded, quality 70), `cropped` (3-5 % cut from each side), `brightened` (x1.25, contrast
    x1.1);
  * flipped labels: 5 % of the original images moved to another class folder;
  * out of domain: crops of photos (scikit-learn's sample images, matplotlib's sample data), blank and
    noise images, filed under random classes and splits.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

SIDE = 32          # the digits (8 x 8) are written at 32 x 32
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
LEAK_KINDS = ("exact", "exact_format", "resized", "jpeg", "cropped", "brightened")


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as uint8 N x 32 x 32 (dark ink on white, like a scan) and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.clip(np.rint(bunch.images * 255.0 / 16.0), 0, 255).astype(np.uint8)
    big = [np.asarray(Image.fromarray(255 - im).resize((SIDE, SIDE), Image.Resampling.BICUBIC)) for im in small]
    return np.stack(big), bunch.target.astype(np.int64)


def photo_sources() -> list[np.ndarray]:
    """The real photos at hand offline: scikit-learn's two samples and matplotlib's sample images."""
    import matplotlib
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(im) for im in load_sample_images().images]
    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        if (sample_data / name).is_file():
            photos.append(np.asarray(Image.open(sample_data / name).convert("RGB")))
    return photos


def out_of_domain(count: int, rng: np.random.Generator) -> list[Image.Image]:
    """`count` images that are no digit: photo crops (most), a blank and a noise image."""
    photos, images = photo_sources(), []
    images.append(Image.new("RGB", (SIDE, SIDE), (128, 128, 128)))
    images.append(Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)))
    while len(images) < count:
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        side = int(rng.integers(48, min(h, w) // 2))
        top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        images.append(crop.resize((SIDE * 2, SIDE * 2), Image.Resampling.BICUBIC))
    return images


def assign_splits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stratified split name per image."""
    splits = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(SPLIT_FRACTIONS["train"] * len(members))
        n_val = round(SPLIT_FRACTIONS["val"] * len(members))
        splits[members[:n_train]] = "train"
        splits[members[n_train:n_train + n_val]] = "val"
        splits[members[n_train + n_val:]] = "test"
    return splits


def leaked_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image | bytes, str]:
    """The copy of `image` for one leak kind and its file suffix (bytes: written as they are)."""
    match kind:
        case "exact":
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue(), ".png"
        case "exact_format":
            return image, ".bmp"
        case "resized":
            side = round(SIDE * (1.25 if rng.random() < 0.5 else 0.8))
            return image.resize((side, side), Image.Resampling.BICUBIC), ".png"
        case "jpeg":
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=70)
            return buffer.getvalue(), ".jpg"
        case "cropped":
            cut = [max(1, round(SIDE * rng.uniform(0.03, 0.05))) for _ in range(4)]
            return image.crop((cut[0], cut[1], SIDE - cut[2], SIDE - cut[3])), ".png"
        case "brightened":
            return ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(1.25)).enhance(1.1), ".png"
        case _:
            raise ValueError(f"unknown leak kind {kind!r}")


def write(path: Path, image: Image.Image | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        image.save(path)
    return path.as_posix()


def build_folder(root: Path, seed: int, leaks_per_kind: int = 15, flip_fraction: float = 0.05,
                 ood: int = 30) -> dict:
    """Write the faulty folder under `root` (emptied first); returns the ground truth (paths relative)."""
    if root.exists():
        shutil.rmtree(root)
    images, labels = digit_images()
    rng = {name: np.random.default_rng([seed, i]) for i, name in enumerate(("split", "leak", "flip", "ood"))}
    splits = assign_splits(labels, rng["split"])
    n = len(labels)
    order = rng["leak"].permutation(n)
    leak_sources = order[:leaks_per_kind * len(LEAK_KINDS)]
    flip_pool = order[len(leak_sources):]  # flips never touch a leaked image or its copy
    flipped = set(rng["flip"].choice(flip_pool, size=round(flip_fraction * n), replace=False).tolist())
    given = labels.copy()
    for i in flipped:
        given[i] = (labels[i] + int(rng["flip"].integers(1, 10))) % 10
    paths = []
    for i in range(n):
        rel = f"{splits[i]}/{given[i]}/d{i:04d}.png"
        paths.append(write(root / rel, Image.fromarray(images[i])).removeprefix(root.as_posix() + "/"))
    leaks = []
    for j, i in enumerate(leak_sources):
        kind = LEAK_KINDS[j % len(LEAK_KINDS)]
        target = "test" if splits[i] == "train" else "train"
        copy, suffix = leaked_copy(Image.open(root / paths[i]), kind, rng["leak"])
        rel = f"{target}/{given[i]}/leak{j:03d}_{kind}{suffix}"
        write(root / rel, copy)
        leaks.append({"a": paths[i], "b": rel, "kind": kind})
    odd = []
    for j, image in enumerate(out_of_domain(ood, rng["ood"])):
        split = str(rng["ood"].choice(list(SPLIT_FRACTIONS), p=list(SPLIT_FRACTIONS.values())))
        rel = f"{split}/{int(rng['ood'].integers(10))}/ood{j:03d}.png"
        write(root / rel, image)
        odd.append(rel)
    return {"seed": seed, "images": n + len(leaks) + len(odd), "digits": n, "leaks": leaks,
            "flipped": sorted(paths[i] for i in flipped), "ood": odd,
            "true_labels": {paths[i]: int(labels[i]) for i in range(n)}}
