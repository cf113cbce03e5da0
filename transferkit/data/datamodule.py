"""`ClassificationDataModule`: an image folder or an embedded dataset, split, transformed, batched."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.data.embedded import embedded_spec
from transferkit.data.eval_sampler import eval_sampler
from transferkit.data.sources import (
    FileSource,
    TransformedDataset,
    pool_sources,
    source_labels,
    subset_source,
)
from transferkit.data.vanished import SkipLog, collate_readable
from transferkit.errors import lookup
from transferkit.data.loader_settings import check_drop_last, check_num_workers
from transferkit.data.splits import check_per_class
from transferkit.data.transforms import TRAIN_PIPELINES
from transferkit.data.folders import scan_image_folder
from transferkit.data.validate import class_counts
from transferkit.data.device_decode import EncodedImages
from transferkit.data.image_cache import DecodedImageCache
from transferkit.data.splits import kfold
from transferkit.data.splits import draw_per_class
from transferkit.data.balance import class_weights
from transferkit.data.multilabel import positive_weights
from transferkit.data.transforms import build_transforms
from transferkit.data.loader_settings import drops_last, loader_settings
from transferkit.data.balance import build_weighted_sampler
from transferkit.data.device_augment import DeviceAugment
from transferkit.data.device_decode import DeviceDecodeLoader
from transferkit.data.streaming.optimized import (IndexedStream, OptimizedSplit, StreamPosition, optimized_sources,
                                                  read_manifest)
from transferkit.data.streaming.remote_scan import scan_remote_folder
from transferkit.data.streaming.store import ObjectStore, is_remote

if TYPE_CHECKING:
    from transferkit.data.folders import FolderScan

log = logging.getLogger(__name__)

BALANCE = ("auto", "none", "weights", "sampler")  # auto: planning decides (planning/balance.py); until then none
SPLITS = ("train", "val", "test")
DECODE = ("cpu", "gpu")  # data.decode: in DataLoader workers, or on the training device (folders)


def check_folder_only(**given) -> None:
    """`data.exclude` and `data.relabel` name files of a folder; the embedded data has none."""
    for key, value in given.items():
        if value:
            raise ValueError(f"data.{key}={value!r} names files of an image folder; set data.root=<folder> "
                             f"(the embedded data has no files), or drop data.{key}.")


class ClassificationDataModule(pl.LightningDataModule):
    """Classification data from `root` (image folder) or, with `root=None`, the `embedded` dataset.

    With `train_per_class=N` the train split (after splitting) keeps a fixed draw of N images per
    class, chosen by `draw_seed` alone; val and test are untouched. (The pool it draws from is fixed
    for `digits` and for folders with their own val/ and test/; carved splits and generated sets
    change with `seed` themselves.)
    Call `scan()` before building the task: it fixes class names and split membership.
    """

    def __init__(self, root: str | None = None, embedded: str = "digits", image_size: int = 32,
                 batch_size: int = 64, num_workers: int | str = "auto", val_fraction: float = 0.15,
                 test_fraction: float = 0.15, max_bad_fraction: float = 0.05,
                 manifest: str | None = None, balance: str = "none", fold: int | None = None,
                 num_folds: int | None = None, cache: bool = False,
                 background: tuple[int, int, int] = (255, 255, 255), embedded_length: int = 20000,
                 train_per_class: int | None = None, draw_seed: int = 0,
                 seed: int = 0, in_chans: int = 3, mean: tuple[float, ...] = (0.5,),
                 std: tuple[float, ...] = (0.5,), augment: str = "light",
                 cache_dir: str | None = None, flips: bool = True, interpolation: str = "bilinear",
                 decode: str = "cpu", synthetic_classes: int = 10, drop_last: bool | str = "auto",
                 exclude: str | None = None, relabel: str | None = None, stream_cache: str | None = None,
                 stream_cache_size: str = "10GB", storage_options: dict | None = None) -> None:
        super().__init__()
        # data.root=s3://...: an object store (data/streaming), listed at scan, read lazily
        self.object_store = ObjectStore(str(root), dict(storage_options or {})) if is_remote(root) else None
        self.storage_options = dict(storage_options or {})
        self.stream_cache, self.stream_cache_size = stream_cache, stream_cache_size
        self.stream_state = StreamPosition()  # where a resumed fit continues a streamed epoch

        check_num_workers(num_workers)
        self.drop_last = check_drop_last(drop_last)
        self.decode = lookup({k: k for k in DECODE}, decode, "data.decode")
        self.synthetic_classes = int(synthetic_classes)
        self.interpolation = interpolation
        if root is None:
            embedded_spec(embedded, "classification")
            check_folder_only(exclude=exclude, relabel=relabel)
        self.exclude, self.relabel = exclude, relabel
        self.fingerprints = None  # a folder's scan: each file's pixel digest and thumbnail (audit, leak check)
        lookup({k: k for k in BALANCE}, balance, "data.balance")

        lookup(TRAIN_PIPELINES, augment, "augment.name")  # fail before scanning, not at the first batch
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size!r} must be a whole number >= 1.")
        self.root, self.embedded, self.image_size = root, embedded, image_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.max_bad_fraction, self.manifest = max_bad_fraction, manifest
        self.balance, self.fold, self.num_folds = balance, fold, num_folds
        self.cache, self.cache_dir = cache, cache_dir
        self.background, self.embedded_length = tuple(background), embedded_length
        self.train_per_class, self.draw_seed = check_per_class(train_per_class), int(draw_seed)
        self.seed, self.in_chans = seed, in_chans
        self.mean, self.std, self.augment, self.flips = list(mean), list(std), augment, flips
        self.class_names: list[str] = []
        self.label_kind = "classification"  # multilabel (a multi-label manifest): labels are bitmasks
        self.sources: dict[str, Dataset] = {}
        self.split_record: dict = {}
        self.skipped: list[tuple[Path, str]] = []
        self.skip_log: SkipLog | None = None  # files that become unreadable during the run (data.vanished)

    # -- scanning -----------------------------------------------------------------
    def scan(self) -> None:
        """Find classes and split membership (idempotent; never writes into `root`)."""
        if self.sources:
            return
        if self.root is not None:
            self._scan_folder()
        else:
            self._load_embedded()
        sizes = {split: len(src) for split, src in self.sources.items()}
        log.info("Data: %s, %d classes, sizes %s", self.describe(), len(self.class_names), sizes)

    def _scan_folder(self) -> None:
        manifest = read_manifest(str(self.root), self.storage_options)
        if manifest is not None:  # written by `optimize`: its splits, streamed (data/streaming/optimized.py)
            return self._scan_optimized(manifest)
        settings = dict(val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=self.seed,
                        manifest=self.manifest, fold=self.fold, num_folds=self.num_folds, exclude=self.exclude,
                        relabel=self.relabel)
        if self.object_store is not None:
            scan = scan_remote_folder(self.object_store, **settings, decode=None if self.decode == "cpu" else "gpu")
        else:
            scan = scan_image_folder(self.root, max_bad_fraction=self.max_bad_fraction, **settings)
        chosen, self.label_kind = None, getattr(scan, "kind", "classification")
        if self.train_per_class is not None:
            if self.label_kind == "multilabel":
                raise ValueError(f"data.train_per_class={self.train_per_class!r} draws images per class; a multi-"
                                 "label image has several. Set data.train_per_class=null for a multi-label manifest.")
            scan, chosen = self._draw_folder_train(scan)
        log.info("\n%s", scan.summary_table())
        for warning in scan.warnings:
            log.warning(warning)
        self.class_names, self.skipped = list(scan.class_names), list(scan.skipped)
        self.fingerprints = scan.fingerprints
        self.split_record = scan.to_json()
        if chosen is not None:
            self.split_record.update(self._draw_record(chosen))
        scanned = sum(len(items) for items in scan.splits.values()) + len(scan.skipped)
        self.skip_log = SkipLog.create(self.max_bad_fraction, scanned, len(scan.skipped))
        self.sources = {split: self._file_source(scan.splits.get(split, [])) for split in SPLITS}

    def _scan_optimized(self, manifest: dict) -> None:
        fixed = {"train_per_class": self.train_per_class, "num_folds": self.num_folds, "fold": self.fold,
                 "manifest": self.manifest, "exclude": self.exclude, "relabel": self.relabel, "cache": self.cache,
                 "decode": self.decode != "cpu" and self.decode, "balance": self.balance == "sampler" and "sampler"}
        for key, value in fixed.items():
            if value:
                raise ValueError(f"data.{key}={value!r} cannot change data.root={self.root!r}: `optimize` fixed its "
                                 f"splits and images. Drop data.{key}, or optimize again with it set.")
        self.class_names, self.skipped = list(manifest["classes"]), [tuple(row) for row in manifest["skipped"]]
        self.split_record = {k: manifest[k] for k in ("root", "classes", "splits", "counts", "skipped")}
        self.sources = optimized_sources(str(self.root), manifest, self.storage_options, self.stream_cache,
                                         self.stream_cache_size, self.in_chans, self.background)

    def _draw_folder_train(self, scan: FolderScan) -> tuple[FolderScan, np.ndarray]:
        """The scan with its train split cut to the draw (before any cache sizes itself), and the draw."""
        from dataclasses import replace


        train = scan.splits.get("train", [])
        chosen = self._draw_train([label for _, label in train], scan.class_names)
        splits = {**scan.splits, "train": [train[i] for i in chosen]}
        return replace(scan, splits=splits, counts=class_counts(splits, len(scan.class_names))), chosen

    def _file_source(self, items: list[tuple[Path, int]]) -> Dataset:
        if self.decode == "gpu":
            return EncodedImages(items, skips=self.skip_log)
        source = FileSource(items, in_chans=self.in_chans, background=self.background, skips=self.skip_log,
                            store=self.object_store)  # data.root=s3://...: objects, fetched lazily
        if not self.cache or not items:
            return source

        return DecodedImageCache(source, image_size=self.image_size, directory=self.cache_dir)

    def _load_embedded(self) -> None:
        spec = embedded_spec(self.embedded, "classification")
        data = spec.load(length=self.embedded_length, image_size=self.image_size, in_chans=self.in_chans,
                         seed=self.seed, val_fraction=self.val_fraction, test_fraction=self.test_fraction,
                         num_classes=self.synthetic_classes)
        self.class_names = list(data.class_names)
        self.sources = dict(data.sources)
        self.split_record = dict(data.record)
        if self.num_folds is not None or self.fold is not None:
            self._fold_embedded()
        if self.train_per_class is not None:
            labels = source_labels(self.sources["train"])
            chosen = self._draw_train(labels, self.class_names)
            self.sources["train"] = subset_source(self.sources["train"], chosen, labels)
            self.split_record.update(self._draw_record(chosen))

    def _fold_embedded(self) -> None:
        """k-fold over the embedded train+val (as for folders): fold `fold` is val; test is untouched."""
        if self.num_folds is None:
            raise ValueError(f"data.fold={self.fold!r} needs data.num_folds (e.g. data.num_folds=5).")
        pool = pool_sources(self.sources["train"], self.sources["val"])
        labels = source_labels(pool)
        items = list(enumerate(labels.tolist()))
        train, val = kfold(items, self.num_folds, self.fold or 0, self.seed, self.class_names)
        self.sources["train"] = subset_source(pool, [i for i, _ in train], labels)
        self.sources["val"] = subset_source(pool, [i for i, _ in val], labels)
        self.split_record.update({"num_folds": self.num_folds, "fold": self.fold or 0,
                                  "val_indices": [i for i, _ in val]})

    def _draw_train(self, labels: Sequence[int] | np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """Indices of the training images kept by `train_per_class`; warns for each smaller class."""
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=len(class_names))
        for label in np.flatnonzero((counts > 0) & (counts < self.train_per_class)):
            log.warning("Class %r has %d training image(s), fewer than data.train_per_class=%d; "
                        "it keeps all of them.", class_names[label], counts[label], self.train_per_class)
        chosen = draw_per_class(labels, self.train_per_class, self.draw_seed)
        log.info("data.train_per_class=%d (data.draw_seed=%d): kept %d of %d training images.",
                 self.train_per_class, self.draw_seed, len(chosen), len(labels))
        return chosen

    def _draw_record(self, chosen: np.ndarray) -> dict:
        """For splits.json: the draw's settings and the kept indices into the undrawn train split."""
        return {"train_per_class": self.train_per_class, "draw_seed": self.draw_seed,
                "train_indices": [int(i) for i in chosen]}

    def describe(self) -> str:
        return str(self.root) if self.root is not None else f"embedded:{self.embedded}"

    # -- what the task needs --------------------------------------------------------
    def labels(self, split: str = "train") -> np.ndarray:
        return source_labels(self.sources[split])

    def use_balance(self, balance: str) -> None:
        """The balance planning decided for `data.balance=auto` (or the one set by hand)."""
        self.balance = lookup({k: k for k in BALANCE if k != "auto"}, balance, "data.balance")

    def positive_weights(self) -> list[float] | None:
        """Multi-label: BCE's per-class positive weights from the train split (None for single-label)."""
        if self.label_kind != "multilabel":
            return None
        return positive_weights(self.labels("train"), len(self.class_names))

    def class_weights(self) -> list[float] | None:
        if self.balance != "weights" or self.label_kind == "multilabel":
            return None

        return class_weights(self.labels("train"), len(self.class_names)).tolist()

    def sizes(self) -> dict[str, int]:
        return {split: len(self.sources.get(split, ())) for split in SPLITS}

    # -- Lightning hooks ------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.scan()

    def transform(self, train: bool):
        # Eval pipelines never augment, but keep the recipe's normalisation (cifar: per image).
        return build_transforms(self.augment, train=train, image_size=self.image_size, mean=self.mean,
                                std=self.std, in_chans=self.in_chans, flips=self.flips,
                                interpolation=self.interpolation)

    def _loader(self, split: str, train: bool) -> DataLoader:
        source, trainer = self.sources[split], getattr(self, "trainer", None)
        settings = loader_settings(self.num_workers, trainer)
        drop_last = train and drops_last(self.drop_last, len(source), self.batch_size, trainer)
        sampler = None
        if train and self.balance == "sampler" and self.label_kind != "multilabel":
            sampler = build_weighted_sampler(self.labels("train"), len(self.class_names), self.seed)
        if not train:
            sampler = eval_sampler(source, split)  # DDP: each image once, no padding
        if isinstance(source, OptimizedSplit):  # LitData's loader: its own shards per rank, a resumable state
            dataset = source.dataset(self.transform(train), train, self.seed, self.in_chans, self.background)
            if not train and len(source):  # read by index: each image once under DDP (data/eval_sampler.py)
                return DataLoader(IndexedStream(dataset, len(source), source.uri), batch_size=self.batch_size,
                                  sampler=sampler, **settings)
            loader = source.loader(dataset, self.batch_size, drop_last, **settings)
            if train:
                self.stream_state.attach(loader)
            return loader
        if getattr(source, "yields_batches", False):  # data.embedded=synthetic: already on the device
            device = trainer.strategy.root_device if trainer is not None else "cpu"
            return DataLoader(source.to_device(device), batch_size=self.batch_size, shuffle=train and sampler is None,
                              sampler=sampler, collate_fn=source.collate, num_workers=0, drop_last=drop_last)
        if self.decode == "gpu":
            return self._device_loader(source, train, sampler, {**settings, "drop_last": drop_last})
        return DataLoader(TransformedDataset(source, self.transform(train), drop_unreadable=True),
                          batch_size=self.batch_size, shuffle=train and sampler is None, sampler=sampler,
                          drop_last=drop_last, collate_fn=collate_readable, **settings)

    def _device_loader(self, source, train: bool, sampler, settings: dict):
        """data.decode=gpu: workers read bytes; decoding and augmentation run on the training device."""
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if device.type != "cuda" and not getattr(self, "_warned_decode", False):
            self._warned_decode = True
            log.warning("data.decode=gpu on a %s run: decoding and augmenting on the %s.", device.type, device.type)
        pipeline = DeviceAugment(self.augment if train else "none", train, self.image_size, tuple(self.mean),
                                 tuple(self.std), self.interpolation, self.flips, self.in_chans)
        if trainer is not None and trainer.world_size > 1 and sampler is None:
            from torch.utils.data import DistributedSampler

            sampler = DistributedSampler(source, shuffle=train, seed=self.seed)
        loader = DataLoader(source, batch_size=self.batch_size, shuffle=train and sampler is None, sampler=sampler,
                            collate_fn=source.collate, num_workers=settings["num_workers"],
                            persistent_workers=settings["persistent_workers"], drop_last=settings["drop_last"])
        rank = trainer.global_rank if trainer is not None else 0
        return DeviceDecodeLoader(loader, pipeline, device, seed=self.seed + 1000 * rank + (0 if train else 1))

    def state_dict(self) -> dict:
        """An optimized data.root: the training loader's position, saved with every checkpoint."""
        return self.stream_state.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.stream_state.load_state_dict(state_dict)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        split = "test" if len(self.sources["test"]) else "val"
        return self._loader(split, train=False)
