"""Exact and near duplicates, and which of them cross splits (leaks), in about linear time.

* exact: the same decoded pixels (the scan's digests; a near pair at distance ~0 is decoded in full to
  check, so a PNG made from a JPEG counts as exact too);
* near: first pass, each image's `neighbours` nearest images by thumbnail (16 x 16 grey, perceptual)
  and by backbone feature; candidates whose thumbnails differ by more than `prefilter` are dropped;
  the rest are verified on their 32 x 32 inputs with a crop and brightness search
  (`alignment.aligned_distances`) and kept at or below `near_threshold`.
No pair of pixels is ever compared all against all.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferkit.data.decode import UnreadableImageError, open_image
from transferkit.data.fingerprints import fingerprint_image
from transferkit.evaluation.audit.alignment import aligned_distances
from transferkit.evaluation.audit.images import SPLITS, AuditImages
from transferkit.evaluation.audit.neighbours import nearest, unit_rows

log = logging.getLogger("transferkit")

COLUMNS = ("path_a", "path_b", "split_a", "split_b", "kind", "distance")
FULL_DECODE_BELOW = 1e-3  # a near pair this close is decoded in full: the same pixels make it exact


@dataclass(frozen=True)
class Duplicate:
    a: int
    b: int
    kind: str        # exact | near
    distance: float  # 0 for exact; else the aligned distance (1 - correlation)
    cross: bool      # the two images are in different splits


def ordered(images: AuditImages, a: int, b: int) -> tuple[int, int]:
    """The pair with the earlier split (train, val, test) first, then by name."""
    key = {i: (SPLITS.index(str(images.splits[i])), images.names[i]) for i in (a, b)}
    return (a, b) if key[a] <= key[b] else (b, a)


def exact_groups(digests: np.ndarray) -> list[list[int]]:
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        groups[bytes(digest)].append(i)
    return [members for members in groups.values() if len(members) > 1]


def exact_pairs(images: AuditImages) -> list[tuple[int, int]]:
    """Each copy paired with its group's first image of every other split, and with the group's first."""
    pairs = set()
    for members in exact_groups(images.digests):
        first_of = {}
        for i in members:
            first_of.setdefault(str(images.splits[i]), i)
        for i in members:
            for other in {members[0], *first_of.values()} - {i}:
                pairs.add(ordered(images, i, other))
    return sorted(pairs)


def candidate_pairs(images: AuditImages, features: np.ndarray, k: int) -> np.ndarray:
    """Unique pairs (a < b) of each image with its k nearest by thumbnail and by feature."""
    found = []
    for space in (unit_rows(images.thumbs), features):
        indices, _ = nearest(space, space, k, same=True)
        rows = np.repeat(np.arange(len(space)), indices.shape[1])
        found.append(np.stack([rows, indices.reshape(-1)], axis=1))
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def same_pixels(a: Path, b: Path) -> bool:
    """Whether two files decode (in full, no reduced JPEG scale) to the same pixels."""
    try:
        return fingerprint_image(open_image(a))[0] == fingerprint_image(open_image(b))[0]
    except UnreadableImageError:
        return False


def find_duplicates(images: AuditImages, features: np.ndarray, tiny: np.ndarray,
                    options: dict) -> tuple[list[Duplicate], dict]:
    """Every exact and near pair, cross-split pairs first, closest first; and what the search did."""
    exact = exact_pairs(images)
    digests = images.digests
    candidates = candidate_pairs(images, features, options["neighbours"])
    candidates = candidates[digests[candidates[:, 0]] != digests[candidates[:, 1]]] if len(candidates) else candidates
    thumbs = unit_rows(images.thumbs)
    thumb_distance = 1 - np.einsum("ij,ij->i", thumbs[candidates[:, 0]], thumbs[candidates[:, 1]])
    verified = candidates[thumb_distance <= options["prefilter"]]
    distance = aligned_distances(tiny, verified)
    near = distance <= options["near_threshold"]
    found = [Duplicate(*ordered(images, a, b), "exact", 0.0, images.splits[a] != images.splits[b]) for a, b in exact]
    for (a, b), d in zip(verified[near], distance[near]):
        kind = "exact" if d < FULL_DECODE_BELOW and images.files and same_pixels(images.items[a], images.items[b]) \
            else "near"
        found.append(Duplicate(*ordered(images, int(a), int(b)), kind, 0.0 if kind == "exact" else max(float(d), 0.0),
                               images.splits[a] != images.splits[b]))
    found.sort(key=lambda p: (not p.cross, p.distance, images.names[p.a], images.names[p.b]))
    stats = {"candidates": int(len(candidates)), "verified": int(len(verified)),
             "near_threshold": options["near_threshold"], "prefilter": options["prefilter"],
             "neighbours": options["neighbours"]}
    log.info("audit: %d duplicate pairs (%d cross-split) from %d candidates, %d verified", len(found),
             sum(p.cross for p in found), len(candidates), len(verified))
    return found, stats


def duplicate_rows(images: AuditImages, pairs: list[Duplicate]) -> list[list]:
    return [[images.names[p.a], images.names[p.b], images.splits[p.a], images.splits[p.b], p.kind,
             round(p.distance, 6)] for p in pairs]
