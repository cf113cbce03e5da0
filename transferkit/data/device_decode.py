"""`data.decode=gpu`: JPEG files decoded and augmented on the training device.

DataLoader workers only read the files' bytes (`EncodedImages`, one flat uint8 tensor per batch);
`DeviceDecodeLoader` decodes each batch with `torchvision.io.decode_jpeg(device=...)` (nvJPEG on a
GPU; other formats through `decode_image` on the host) and augments it with `DeviceAugment`, in a
background thread on its own CUDA stream, a few batches ahead of training. The CPU cores then only
read files, which keeps a fast GPU fed where per-image decoding and augmentation in workers cannot.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.data.device_augment import DeviceAugment
from transferkit.data.sources import FileSource, TransformedDataset
from transferkit.data.vanished import SkipLog, SkippedImage, Unreadable, readable_stand_in

log = logging.getLogger(__name__)

PREFETCH = 3  # batches decoded ahead of the training step


class EncodedBatch(NamedTuple):
    data: torch.Tensor     # the files' bytes, concatenated
    lengths: torch.Tensor  # bytes per file
    labels: torch.Tensor


class EncodedImages(Dataset):
    """`(file bytes as uint8 tensor, label)` of image files; `collate` packs a batch as an `EncodedBatch`.
    With `skips`, a file that cannot be read any more (deleted, unreadable since the scan) is recorded there
    and dropped from its batch, as `data.vanished` does on the CPU path. (A file whose bytes are still there
    but damaged fails in the device decode: it is not caught here.)"""

    def __init__(self, items: Sequence[tuple[Path, int]], skips: SkipLog | None = None) -> None:
        self.items = list(items)
        self.labels = np.asarray([label for _, label in self.items], dtype=np.int64)
        self.skips = skips

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            if self.skips is None:
                raise
            reason = "file not found" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {err.strerror}"
            self.skips.record(path, reason)
            raise SkippedImage(path, reason) from err
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), int(label)

    def __getitem__(self, index: int):
        try:
            return self.load(index)
        except SkippedImage as err:
            return Unreadable(str(err.path), readable_stand_in(self, index))

    @staticmethod
    def collate(batch: list) -> EncodedBatch:
        # One tensor per batch: workers hand each tensor over in its own shared-memory segment.
        readable = [item for item in batch if not isinstance(item, Unreadable)]
        batch = readable or [item.stand_in for item in batch]  # a batch of gone files: their stand-ins
        data = [item[0] for item in batch]
        return EncodedBatch(torch.cat(data), torch.tensor([len(d) for d in data]),
                            torch.tensor([item[1] for item in batch]))


def decoded_on_cpu(dataset: Dataset, datamodule) -> Dataset:
    """`dataset` as the CPU eval pipeline shows it: `EncodedImages` (file bytes) become the same files
    decoded and put through `datamodule`'s eval transform; any other dataset is returned as it is.
    For what reads images outside the training loop (the run report's test images)."""
    if not isinstance(dataset, EncodedImages):
        return dataset

    source = FileSource(dataset.items, in_chans=datamodule.in_chans, background=datamodule.background)
    return TransformedDataset(source, datamodule.transform(train=False))


def is_jpeg(data: torch.Tensor) -> bool:
    return len(data) > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode_images(batch: EncodedBatch, device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 C x H x W images on `device`: JPEGs in one batched `decode_jpeg`, the rest on the host."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    files = torch.split(batch.data, batch.lengths.tolist())
    images: list[torch.Tensor | None] = [None] * len(files)
    jpegs = [i for i, data in enumerate(files) if is_jpeg(data)]
    if jpegs:
        decoded = decode_jpeg([files[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        for i, image in zip(jpegs, decoded):
            images[i] = image
    for i, data in enumerate(files):
        if images[i] is None:
            images[i] = decode_image(data, mode=ImageReadMode.RGB).to(device, non_blocking=True)
    return images  # type: ignore[return-value]


class DeviceDecodeLoader:
    """Iterate `loader` (of `EncodedBatch`es) as `(images, labels)` decoded and augmented on `device`.

    Lightning sees its `dataset`, `batch_size` and length; the decoding thread stops when an epoch ends
    or is abandoned. Each epoch draws its crops from `random.Random(seed + epoch)`.
    """

    def __init__(self, loader: DataLoader, pipeline: DeviceAugment, device: torch.device, seed: int,
                 prefetch: int = PREFETCH) -> None:
        self.loader, self.pipeline, self.device = loader, pipeline, torch.device(device)
        self.seed, self.prefetch, self.epoch = int(seed), int(prefetch), 0
        self.dataset, self.batch_size = loader.dataset, loader.batch_size
        self.sampler, self.batch_sampler = loader.sampler, loader.batch_sampler
        self.drop_last, self.num_workers = loader.drop_last, loader.num_workers

    def __len__(self) -> int:
        return len(self.loader)

    def _produce(self, out: queue.Queue, stop: threading.Event, rng: random.Random) -> None:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        try:
            with torch.cuda.stream(stream) if cuda else nullcontext(), torch.no_grad():
                for batch in self.loader:
                    images = self.pipeline(decode_images(batch, self.device), rng)
                    labels = batch.labels.to(self.device, non_blocking=True)
                    event = torch.cuda.Event() if cuda else None
                    if event is not None:
                        event.record(stream)
                    while not stop.is_set():
                        try:
                            out.put((images, labels, event), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
        except BaseException as err:  # noqa: BLE001 - re-raised in the training thread
            out.put(err)
            return
        out.put(None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(out, stop, rng), daemon=True,
                                  name="transferkit-device-decode")
        thread.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                images, labels, event = item
                if event is not None:  # the consumer's stream waits for the decode stream's work
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    images.record_stream(current)
                    labels.record_stream(current)
                yield images, labels
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    out.get(timeout=0.1)
                except queue.Empty:
                    pass
            thread.join()
