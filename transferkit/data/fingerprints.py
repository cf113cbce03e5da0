"""What the scan's decode pass remembers of each image: a digest of its pixels and a tiny thumbnail.

The folder check decodes every file once anyway; `inspect_files` makes that same decode also yield
the image's fingerprint, so finding leaks costs no second read. The digest identifies the decoded
pixels whatever the file format (a PNG and a BMP of the same pixels share it); the thumbnail (16 x 16
grey) is the perceptual part that `audit` compares for near duplicates. A JPEG is checked at a
reduced scale (DCT scaling), so its digest is that of the reduced decode: byte copies of it match, a
PNG made from it is found as a near duplicate by `audit`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from transferkit.data.decode import UnreadableImageError, has_transparency, open_image
from transferkit.data.discover import Item
from transferkit.data.validate import CHECK_DECODE_SIZE, BadFile

THUMB_SIDE = 16
DIGEST_BYTES = 16
SHOWN_PAIRS = 5  # cross-split pairs named in the scan's warning

Print = tuple[bytes, np.ndarray]  # (digest, THUMB_SIDE x THUMB_SIDE uint8 thumbnail)


@dataclass(frozen=True)
class Fingerprints:
    """The fingerprints of a scan's files, compact: digests (N, raw bytes) and thumbnails (N x 16 x 16)."""

    index: dict[Path, int]
    digests: np.ndarray
    thumbs: np.ndarray

    @classmethod
    def of(cls, found: dict[Path, Print]) -> Fingerprints:
        paths = list(found)
        digests = np.array([found[p][0] for p in paths], dtype=f"S{DIGEST_BYTES}")
        thumbs = np.stack([found[p][1] for p in paths]) if paths else np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.uint8)
        return cls({p: i for i, p in enumerate(paths)}, digests, thumbs)

    def __len__(self) -> int:
        return len(self.index)

    def digest(self, path: Path) -> bytes | None:
        i = self.index.get(path)
        return None if i is None else bytes(self.digests[i])


def canonical(image: Image.Image) -> Image.Image:
    """The image in one mode per kind of content, so the same pixels hash the same whatever the format."""
    mode = "RGBA" if has_transparency(image) else "RGB"
    return image if image.mode == mode else image.convert(mode)


def fingerprint_image(image: Image.Image) -> Print:
    """The digest of the decoded pixels and the 16 x 16 grey thumbnail (box filter) of a Pillow image."""
    pixels = canonical(image)
    raw = np.ascontiguousarray(pixels)
    digest = hashlib.blake2b(str(raw.shape).encode(), digest_size=DIGEST_BYTES)
    digest.update(memoryview(raw).cast("B"))
    small = pixels.convert("RGB").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return digest.digest(), np.asarray(small.convert("L"), dtype=np.uint8)


def fingerprint_array(pixels: np.ndarray) -> Print:
    """The fingerprint of an image held in memory (uint8 H x W, H x W x 1 or H x W x 3)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    return fingerprint_image(Image.fromarray(np.ascontiguousarray(pixels)))


def inspect_image(path: Path) -> BadFile | Print:
    """Decode `path` as the folder check does: its fingerprint, or why it is unusable."""
    try:
        return fingerprint_image(open_image(path, min_size=CHECK_DECODE_SIZE))
    except UnreadableImageError as error:
        return BadFile(path, error.reason)


def inspect_files(paths: Sequence[Path], num_workers: int = 0) -> tuple[list[BadFile], Fingerprints]:
    """The unreadable files (input order) and the fingerprints of the readable ones: one decode each."""
    if num_workers > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(inspect_image, paths, chunksize=16))
    else:
        results = [inspect_image(path) for path in paths]
    bad = [r for r in results if isinstance(r, BadFile)]
    return bad, Fingerprints.of({p: r for p, r in zip(paths, results) if not isinstance(r, BadFile)})


def cross_split_duplicates(splits: dict[str, list[Item]], prints: Fingerprints) -> list[tuple[Path, Path]]:
    """Pairs `(earlier split's file, later split's file)` with the same decoded pixels: leaked examples."""
    first_seen: dict[bytes, dict[str, Path]] = defaultdict(dict)  # digest -> split -> its first file
    pairs: list[tuple[Path, Path]] = []
    for name, items in splits.items():
        for path, _ in items:
            digest = prints.digest(path)
            if digest is None:
                continue
            seen = first_seen[digest]
            pairs += [(other, path) for split, other in seen.items() if split != name]
            seen.setdefault(name, path)
    return sorted(pairs)


def leak_notes(pairs: Sequence[tuple[Path, Path]], root: Path | str, shown: int = SHOWN_PAIRS) -> list[str]:
    """The scan's warning about cross-split pairs: how many, a few by name, and what to do."""
    if not pairs:
        return []
    examples = "; ".join(f"{a} == {b}" for a, b in pairs[:shown])
    return [f"{len(pairs)} file(s) appear in more than one split with the same pixels, which leaks them into "
            f"evaluation and inflates its scores (e.g. {examples}). Near duplicates too: python -m transferkit "
            f"audit data.root={root}; leave copies out with data.exclude=<a CSV with a path column>."]
