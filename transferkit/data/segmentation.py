"""Segmentation data: image/mask folders matched by file stem, or the embedded scenes; joint transforms.

Layouts under ``data.root``:

* ``<root>/images/*`` + ``<root>/masks/*`` (split with ``data.val_fraction`` / ``data.test_fraction``
  from ``seed``), or
* ``<root>/{train,val,test}/{images,masks}/*`` (``test`` optional).

A mask has the same stem as its image (``cat_01.jpg`` -> ``cat_01.png``) and holds class ids; see
:mod:`transferkit.data.masks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from transferkit.data.decode import IMAGE_EXTENSIONS, UnreadableImageError, displayed_size, load_image
from transferkit.data.embedded import embedded_spec
from transferkit.data.eval_sampler import eval_sampler
from transferkit.data.masks import load_mask
from transferkit.data.sources import match_image_channels
from transferkit.data.vanished import SkipLog, SkippedImage, SkipsUnreadable, collate_readable
from transferkit.data.transforms import TRAIN_PIPELINES, build_transforms
from transferkit.errors import lookup
from transferkit.data.loader_settings import check_drop_last
from transferkit.data.embedded.scenes import SCENE_CLASSES
from transferkit.data.loader_settings import drops_last, loader_settings

log = logging.getLogger(__name__)

Pair = tuple[Path, Path]
SPLITS = ("train", "val", "test")


def list_images(folder: Path) -> dict[str, Path]:
    """``stem -> path`` for the image files directly in ``folder``; two files per stem raise."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            if path.stem in found:
                raise ValueError(
                    f"{str(found[path.stem])!r} and {str(path)!r} share the stem {path.stem!r}; "
                    "images and masks are matched by stem, so rename or remove one."
                )
            found[path.stem] = path
    return found


def pair_folder(folder: Path) -> list[Pair]:
    """Match ``folder/images/*`` with ``folder/masks/*`` by stem; a missing mask raises naming it."""
    images, masks = list_images(folder / "images"), list_images(folder / "masks")
    missing = [images[s] for s in images if s not in masks]
    if missing:
        raise FileNotFoundError(
            f"no mask for image {str(missing[0])!r} ({len(missing)} image(s) without one); expected "
            f"{str(folder / 'masks' / (missing[0].stem + '.png'))!r}. Add the mask or remove the image."
        )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        log.warning("%d mask(s) in %s have no image and are ignored, e.g. %s",
                    len(orphans), folder / "masks", masks[orphans[0]].name)
    if not images:
        raise FileNotFoundError(f"{str(folder / 'images')!r} holds no images.")
    return [(images[s], masks[s]) for s in sorted(images)]


def check_pair_sizes(pairs: Sequence[Pair]) -> None:
    """Raise naming both files when a mask's size differs from its image's.

    Sizes are as decoded (``decode.displayed_size``): EXIF orientation applied, so a phone photo
    stored 64x48 but displayed 48x64 pairs with a mask drawn on the displayed image.
    """
    for image_path, mask_path in pairs:
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            image_size, mask_size = displayed_size(image), displayed_size(mask)
            turned = " once its EXIF orientation is applied" if image_size != image.size else ""
            if image_size != mask_size:
                raise ValueError(
                    f"mask {str(mask_path)!r} is {mask_size[0]}x{mask_size[1]} but its image "
                    f"{str(image_path)!r} is {image_size[0]}x{image_size[1]}{turned} (width x height); "
                    "masks must have their image's size as displayed."
                )


def split_pairs(pairs: Sequence[Pair], val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[Pair]]:
    """Seeded random train/val/test split; val and test get at least one pair when asked for."""
    for key, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{key}={value!r} is out of range; use a fraction in [0, 1).")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, round(val_fraction * len(pairs))) if val_fraction else 0
    n_test = max(1, round(test_fraction * len(pairs))) if test_fraction else 0
    if n_val + n_test >= len(pairs):
        raise ValueError(
            f"{len(pairs)} images cannot give data.val_fraction={val_fraction!r} and "
            f"data.test_fraction={test_fraction!r} and still leave training images; add images."
        )
    chosen = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    return {split: [pairs[i] for i in sorted(idx)] for split, idx in chosen.items()}


def scan_segmentation_folder(root: Path | str, val_fraction: float = 0.15,
                             test_fraction: float = 0.15, seed: int = 0) -> dict[str, list[Pair]]:
    """Find image/mask pairs under ``root`` and split them (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r} is not a folder.")
    if (root / "images").is_dir():
        pairs = pair_folder(root)
        check_pair_sizes(pairs)
        return split_pairs(pairs, val_fraction, test_fraction, seed)
    if (root / "train" / "images").is_dir():
        splits = {s: pair_folder(root / s) for s in SPLITS if (root / s / "images").is_dir()}
        if "val" not in splits:
            rest = split_pairs(splits["train"], val_fraction or 0.15, 0.0, seed)
            splits["train"], splits["val"] = rest["train"], rest["val"]
        for pairs in splits.values():
            check_pair_sizes(pairs)
        return {s: splits.get(s, []) for s in SPLITS}
    raise FileNotFoundError(
        f"data.root={str(root)!r} has neither images/ and masks/ nor train/images/ and train/masks/. "
        "Put images in <root>/images and masks with the same file stems in <root>/masks."
    )


class MaskFileSource(Dataset):
    """``(uint8 H x W x C image, int64 H x W mask)`` pairs read from disk. With `skips`, a pair whose image or
    mask became unreadable since the scan is recorded there and raised as `SkippedImage` (data.vanished)."""

    def __init__(self, pairs: Sequence[Pair], num_classes: int, ignore_index: int = 255,
                 mask_palette: Mapping | None = None, in_chans: int = 3, skips: SkipLog | None = None) -> None:
        self.pairs = list(pairs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mask_palette, self.in_chans = mask_palette, in_chans
        self.skips = skips

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        try:
            image = load_image(image_path, in_chans=self.in_chans)
            mask = load_mask(mask_path, self.num_classes, self.ignore_index, self.mask_palette)
        except UnreadableImageError as err:
            if self.skips is None:
                raise
            self.skips.record(err.path, err.reason)
            raise SkippedImage(err.path, err.reason) from err
        if image.shape[:2] != mask.shape:
            raise ValueError(f"mask {str(mask_path)!r} has shape {mask.shape} but its image "
                             f"{str(image_path)!r} is {image.shape[:2]}; masks must match their image.")
        return image, mask


class JointTransformDataset(SkipsUnreadable, Dataset):
    """Apply an albumentations pipeline to image and mask together -> ``(float C x H x W, long H x W)``.
    A pair that became unreadable mid-run is handled as `sources.TransformedDataset` handles an image."""

    def __init__(self, source: Dataset, transform: Callable, in_chans: int = 3, drop_unreadable: bool = False) -> None:
        self.source, self.transform, self.in_chans = source, transform, in_chans
        self.drop_unreadable = drop_unreadable

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.source[index]
        out = self.transform(image=match_image_channels(image, self.in_chans), mask=mask)
        return out["image"], out["mask"].long()



class SegmentationDataModule(pl.LightningDataModule):
    """Segmentation data from ``root`` or, with ``root=None``, the ``embedded`` scenes.

    Call ``scan()`` before building the task: it fixes class names and split membership.
    """

    def __init__(self, root: str | None = None, embedded: str = "scenes", image_size: int = 64,
                 batch_size: int = 8, num_workers: int = 0, num_classes: int | None = None,
                 class_names: list[str] | None = None, ignore_index: int = 255,
                 mask_palette: dict | None = None, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, embedded_length: int = 512,
                 seed: int = 0, in_chans: int = 3, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), augment: str = "light",
                 interpolation: str = "bilinear", drop_last: bool | str = "auto",
                 max_bad_fraction: float = 0.05) -> None:
        super().__init__()
        self.max_bad_fraction = max_bad_fraction
        self.skip_log: SkipLog | None = None  # pairs that become unreadable during the run (data.vanished)

        self.interpolation, self.drop_last = interpolation, check_drop_last(drop_last)
        if root is None:
            embedded_spec(embedded, "segmentation")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size!r} must be a whole number >= 1.")
        lookup(TRAIN_PIPELINES, augment, "augment.name")
        self.root, self.embedded, self.image_size = root, embedded, image_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.ignore_index, self.mask_palette = ignore_index, mask_palette
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.embedded_length, self.seed, self.in_chans = embedded_length, seed, in_chans
        self.mean, self.std, self.augment = list(mean), list(std), augment
        self.class_names = self._class_names(root, num_classes, class_names)
        self.sources: dict[str, Dataset] = {}
        self.split_record: dict = {}

    @staticmethod
    def _class_names(root: str | None, num_classes: int | None, class_names: list[str] | None) -> list[str]:
        if root is None:
            # scenes is the only segmentation entry of EMBEDDED, and its spec carries no class names.

            if class_names and len(class_names) != len(SCENE_CLASSES):
                raise ValueError(f"data.class_names={list(class_names)!r} does not fit the embedded scenes "
                                 f"{list(SCENE_CLASSES)}; rename them one for one or leave it null.")
            return list(class_names or SCENE_CLASSES)
        if class_names and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"data.class_names has {len(class_names)} names but data.num_classes="
                             f"{num_classes!r}; make them agree or drop data.num_classes.")
        if class_names:
            return list(class_names)
        if num_classes is None or num_classes < 2:
            raise ValueError(f"data.num_classes={num_classes!r}: with data.root set, give the number of "
                             "classes (>= 2, background included) or data.class_names.")
        return [f"class_{i}" for i in range(num_classes)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def scan(self) -> None:
        """Fix split membership (idempotent; never writes into ``root``)."""
        if self.sources:
            return
        if self.root is None:
            self._load_embedded()
        else:
            splits = scan_segmentation_folder(self.root, self.val_fraction, self.test_fraction, self.seed)
            self.skip_log = SkipLog.create(self.max_bad_fraction, sum(len(p) for p in splits.values()), 0)
            self.sources = {s: MaskFileSource(p, self.num_classes, self.ignore_index, self.mask_palette,
                                              self.in_chans, self.skip_log) for s, p in splits.items()}
            self.split_record = {s: [[str(i), str(m)] for i, m in p] for s, p in splits.items()}
        log.info("Data: %s, %d classes, sizes %s", self.describe(), self.num_classes, self.sizes())

    def _load_embedded(self) -> None:
        data = embedded_spec(self.embedded, "segmentation").load(
            length=self.embedded_length, image_size=self.image_size, in_chans=self.in_chans, seed=self.seed,
            val_fraction=self.val_fraction, test_fraction=self.test_fraction)
        assert len(data.class_names) == self.num_classes, (data.class_names, self.class_names)
        self.sources, self.split_record = dict(data.sources), dict(data.record)

    def describe(self) -> str:
        return str(self.root) if self.root is not None else f"embedded:{self.embedded}"

    def sizes(self) -> dict[str, int]:
        return {split: len(self.sources.get(split, ())) for split in SPLITS}

    def setup(self, stage: str | None = None) -> None:
        self.scan()

    def transform(self, train: bool) -> A.Compose:
        """Image and mask jointly (nearest for masks); pixels that augmentation invents are ignored."""
        return build_transforms(self.augment, train, self.image_size, self.mean, self.std,
                                in_chans=self.in_chans, fill_mask=self.ignore_index,
                                interpolation=self.interpolation)

    def dataset(self, split: str, train: bool = False, drop_unreadable: bool = False) -> JointTransformDataset:
        self.scan()
        return JointTransformDataset(self.sources[split], self.transform(train), self.in_chans, drop_unreadable)

    def _loader(self, split: str, train: bool) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        settings = loader_settings(self.num_workers, trainer)
        dataset = self.dataset(split, train, drop_unreadable=self.skip_log is not None)
        sampler = None if train else eval_sampler(dataset, split)  # DDP: each image once, no padding
        drop_last = train and drops_last(self.drop_last, len(dataset), self.batch_size, trainer)
        collate = {"collate_fn": collate_readable} if self.skip_log is not None else {}
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train, sampler=sampler, drop_last=drop_last,
                          **settings, **collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if len(self.sources.get("test", ())) else "val", train=False)
