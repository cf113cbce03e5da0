"""Segmentation data: image/mask folders matched by file stem, or the embedded scenes; joint transforms.

Layouts under ``data.root`` (a local folder, or ``s3://...`` streamed raw): see `segmentation_scan.py`:

* ``<root>/images/*`` + ``<root>/masks/*`` (split with ``data.val_fraction`` / ``data.test_fraction``
  from ``seed``), or
* ``<root>/{train,val,test}/{images,masks}/*`` (``test`` optional).

A mask has the same stem as its image (``cat_01.jpg`` -> ``cat_01.png``) and holds class ids; see
:mod:`transferkit.data.masks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.data.decode import UnreadableImageError, load_image
from transferkit.data.embedded import embedded_spec
from transferkit.data.eval_sampler import eval_sampler
from transferkit.data.masks import load_mask
from transferkit.data.segmentation_scan import Pair, scan_segmentation_folder
from transferkit.data.sources import match_image_channels, open_item
from transferkit.data.vanished import SkipLog, SkippedImage, SkipsUnreadable, collate_readable
from transferkit.data.transforms import TRAIN_PIPELINES, build_transforms
from transferkit.errors import lookup
from transferkit.data.loader_settings import check_drop_last
from transferkit.data.embedded.scenes import SCENE_CLASSES
from transferkit.data.loader_settings import drops_last, loader_settings
from transferkit.data.streaming.optimized import read_manifest
from transferkit.data.streaming.remote_segmentation import scan_remote_segmentation
from transferkit.data.streaming.store import ObjectStore, is_remote

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class MaskFileSource(Dataset):
    """``(uint8 H x W x C image, int64 H x W mask)`` pairs read from disk, or with `store` from an object store
    (`data.root=s3://...`, fetched lazily). With `skips`, a pair whose image or mask became unreadable since the
    scan is recorded there (an object by its URI) and raised as `SkippedImage` (data.vanished)."""

    def __init__(self, pairs: Sequence[Pair], num_classes: int, ignore_index: int = 255,
                 mask_palette: Mapping | None = None, in_chans: int = 3, skips: SkipLog | None = None,
                 store: ObjectStore | None = None) -> None:
        self.pairs = list(pairs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mask_palette, self.in_chans = mask_palette, in_chans
        self.skips, self.store = skips, store

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        reading = image_path
        try:
            image = load_image(open_item(image_path, self.store), in_chans=self.in_chans)
            reading = mask_path
            mask = load_mask(open_item(mask_path, self.store), self.num_classes, self.ignore_index,
                             self.mask_palette)
        except UnreadableImageError as err:
            if self.skips is None:
                raise
            where = err.path if self.store is None else self.store.uri_of(reading)
            self.skips.record(where, err.reason)
            raise SkippedImage(where, err.reason) from err
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
                 max_bad_fraction: float = 0.05, storage_options: dict | None = None) -> None:
        super().__init__()
        # data.root=s3://...: an object store, listed at scan and read lazily (raw; data/streaming)
        self.object_store = ObjectStore(str(root), dict(storage_options or {})) if is_remote(root) else None
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
            splits = self._scan_folder()
            self.skip_log = SkipLog.create(self.max_bad_fraction, sum(len(p) for p in splits.values()), 0)
            self.sources = {s: MaskFileSource(p, self.num_classes, self.ignore_index, self.mask_palette,
                                              self.in_chans, self.skip_log, self.object_store)
                            for s, p in splits.items()}
            self.split_record = {s: [[str(i), str(m)] for i, m in p] for s, p in splits.items()}
        log.info("Data: %s, %d classes, sizes %s", self.describe(), self.num_classes, self.sizes())

    def _scan_folder(self) -> dict[str, list]:
        options = self.object_store.options if self.object_store is not None else None
        if read_manifest(str(self.root), options) is not None:
            raise ValueError(f"data.root={self.root!r} is an optimized classification data set (`optimize`); "
                             "segmentation streams raw only: point data.root at the folder of images/ and masks/.")
        if self.object_store is not None:
            return scan_remote_segmentation(self.object_store, self.val_fraction, self.test_fraction, self.seed)
        return scan_segmentation_folder(self.root, self.val_fraction, self.test_fraction, self.seed)

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
