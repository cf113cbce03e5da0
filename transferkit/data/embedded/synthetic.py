"""`data.embedded=synthetic`: random images and labels that live on the training device.

For measuring the model-bound rate through `fit` itself: no decoding, no augmentation, no host-to-device
copy of pixels. A pool of random images (at most `POOL` distinct ones, N(0, 1) pixels, already
"normalised") is generated on the device when the first loader asks for it; item `i` is pool image
`i % POOL` with its own label. A batch is one gather on the device (`__getitems__`), so the loader runs
in the training process (no workers) and Lightning's batch transfer is a no-op.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from transferkit.data.device_index import device_index

POOL = 1024  # distinct images kept on the device (the rest repeat them)


class SyntheticImages(Dataset):
    """`length` random `in_chans x image_size x image_size` images with labels in `range(num_classes)`.

    Items are whole batches: use `collate` as the DataLoader's `collate_fn` (`yields_batches`).
    """

    yields_batches = True

    def __init__(self, length: int, image_size: int, in_chans: int, num_classes: int, seed: int,
                 pool: int = POOL) -> None:
        if length < 1 or num_classes < 2:
            raise ValueError(f"synthetic data needs length >= 1 and >= 2 classes (got {length}, {num_classes}); "
                             "set data.embedded_length and data.synthetic_classes.")
        self.length, self.image_size, self.in_chans = int(length), int(image_size), int(in_chans)
        self.num_classes, self.seed, self.pool = int(num_classes), int(seed), int(pool)
        self.labels = np.random.default_rng(seed).integers(0, num_classes, self.length).astype(np.int64)
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.length

    @property
    def device(self) -> torch.device:
        return self._images.device if self._images is not None else torch.device("cpu")

    def to_device(self, device: torch.device | str) -> SyntheticImages:
        """Generate the pool (seeded) on `device`, once."""
        device = torch.device(device)
        if self._images is not None and self._images.device == device:
            return self
        generator = torch.Generator(device=device).manual_seed(self.seed)
        size = (min(self.length, self.pool), self.in_chans, self.image_size, self.image_size)
        self._images = torch.randn(size, generator=generator, device=device)
        self._labels = torch.from_numpy(self.labels).to(device)
        return self

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is None:
            self.to_device("cpu")
        index = device_index(indices, self.device)
        return self._images[index % len(self._images)], self._labels[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__([index])
        return images[0], int(self.labels[index])

    @staticmethod
    def collate(batch):
        """`__getitems__` already returns the batch."""
        return batch
