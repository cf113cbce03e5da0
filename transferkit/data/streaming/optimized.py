"""`fit data.root=<optimized>`: the splits `optimize` wrote, streamed by LitData's `StreamingDataset` /
`StreamingDataLoader` (equal shards per rank, a resumable loader state) through a size-bounded chunk cache.

Validation and test use `drop_last=False`: under DDP every image is evaluated once.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferkit.data.decode import load_image
from transferkit.data.streaming.optimize import MANIFEST
from transferkit.data.streaming.store import (READ_TRIES, ObjectStore, is_network_failure, is_remote, split_uri,
                                             stream_failure)

log = logging.getLogger(__name__)

DEFAULT_CACHE = "transferkit-stream-cache"


def read_manifest(root: str, storage_options: dict | None = None) -> dict | None:
    """The manifest `optimize` wrote into `root`, or None when `root` is not an optimized data set."""
    if not is_remote(root):
        path = Path(root).expanduser() / MANIFEST
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    store = ObjectStore(root, dict(storage_options or {}))
    key = f"{store.path}/{MANIFEST}"
    return json.loads(store.fs.cat_file(key)) if store.fs.exists(key) else None


def allow_plain_http(storage_options: dict | None) -> None:
    """LitData reads chunks with obstore, which refuses `http://` endpoints unless told; told only for them
    (a local S3-compatible store), never for https."""
    endpoint = (storage_options or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL", "")
    if str(endpoint).startswith("http://"):
        from litdata.streaming import downloader  # lazy: the stream extra is optional

        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"


def litdata_options(storage_options: dict, uri: str) -> dict:
    """The options LitData's S3 client gets: the user's, with its retries bounded. LitData's own default is 1000
    adaptive attempts, so a store that went away mid-run stalled the run for hours instead of stopping it."""
    options = dict(storage_options)
    if split_uri(uri)[0] == "s3" and "config" not in options:
        import botocore.config  # lazy: the stream extra is optional

        options["config"] = botocore.config.Config(retries={"max_attempts": READ_TRIES, "mode": "standard"},
                                                   connect_timeout=10, read_timeout=60)
    return options


def read_or_name(read: Callable, index, uri: str):
    """`read(index)`; a network failure (after the client's retries) becomes one line naming `uri`."""
    try:
        return read(index)
    except Exception as err:  # noqa: BLE001 - LitData, botocore and obstore errors have no common base
        if is_network_failure(err):
            raise stream_failure(err, uri) from err
        raise


class IndexedStream:
    """An evaluation split read by index (LitData's random access): a map-style dataset, so the usual per-rank
    sampler (`data/eval_sampler.py`) gives every image to exactly one rank, however few there are. LitData's
    own sharding hands whole chunks to ranks, which can leave a rank with nothing to evaluate."""

    def __init__(self, dataset, length: int, uri: str = "") -> None:
        self.dataset, self.length, self.uri = dataset, length, uri

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return read_or_name(self.dataset.__getitem__, int(index), self.uri)


class DecodeSample:
    """LitData's per-item transform: encoded bytes -> the decoded, augmented `(C x H x W tensor, label)` (without
    a transform: the decoded `(uint8 H x W x C image, label)`, as a folder's `FileSource` gives it)."""

    def __init__(self, transform: Callable | None, in_chans: int, background: tuple[int, int, int]) -> None:
        self.transform, self.in_chans, self.background = transform, in_chans, tuple(background)

    def __call__(self, item: dict):
        image = load_image(io.BytesIO(item["image"]), in_chans=self.in_chans, background=self.background)
        if self.transform is None:
            return image, int(item["label"])
        return self.transform(image=image)["image"], int(item["label"])


@dataclass
class OptimizedSplit:
    """One split of an optimized data set: where it is, its labels (known from the manifest), how to stream it."""

    uri: str
    labels: np.ndarray
    storage_options: dict = field(default_factory=dict)
    cache_dir: str | None = None
    cache_size: str = "10GB"
    in_chans: int = 3
    background: tuple[int, int, int] = (255, 255, 255)
    _by_index: object = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """One image by index, decoded and not transformed (a source for `sources.TransformedDataset`: the linear
        probe's pass over the training split). LitData reads it by index, fetching just its bytes."""
        if not 0 <= int(index) < len(self):
            raise IndexError(f"index {index} is out of range for {self.uri} ({len(self)} images)")
        if self._by_index is None:
            self._by_index = self.dataset(None, train=False, seed=0, in_chans=self.in_chans,
                                          background=self.background)
        return read_or_name(self._by_index.__getitem__, int(index), self.uri)

    def cache_folder(self) -> str | None:
        """A folder of its own per split (chunk names repeat across splits) and per process of a node under
        `data.stream_cache`: LitData's index download waits on a shared folder's lock only a second, and a
        busy node's second process then finds no index."""
        if not is_remote(self.uri):
            return None
        base = self.cache_dir or os.path.join(tempfile.gettempdir(), DEFAULT_CACHE)
        split = hashlib.sha1(self.uri.encode()).hexdigest()[:16]
        return os.path.join(os.path.expanduser(base), split, f"rank{os.environ.get('LOCAL_RANK', '0')}")

    def dataset(self, transform: Callable | None, train: bool, seed: int, in_chans: int = 3,
                background: tuple[int, int, int] = (255, 255, 255)):
        from litdata import StreamingDataset  # lazy: the stream extra is optional

        if not len(self):  # a split `optimize` did not write (e.g. data.val_fraction=0)
            return []
        allow_plain_http(self.storage_options)
        options = {"storage_options": litdata_options(self.storage_options, self.uri)} if is_remote(self.uri) else {}
        return mapping_dataset_class()(self.uri, cache_dir=self.cache_folder(), shuffle=train, seed=seed,
                                       drop_last=train, max_cache_size=self.cache_size,
                                       transform=DecodeSample(transform, in_chans, background), **options)

    def loader(self, dataset, batch_size: int, drop_last: bool, num_workers: int, persistent_workers: bool = False,
               **_):
        from torch.utils.data import DataLoader  # lazy: beside the one above

        if not len(self):
            return DataLoader([], batch_size=batch_size)
        return resuming_loader_class()(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                                   persistent_workers=persistent_workers and num_workers > 0)


def keeps_every_chunk(reader) -> bool:
    """Whether LitData's reader never deletes a chunk of this split: no cache bound, or the whole split fits in
    it (so neither delete-when-processed nor eviction runs) and the node keeps its shard."""
    limit, config = getattr(reader, "_max_cache_size", None), getattr(reader, "_config", None)
    if config is None or getattr(reader, "_keep_node_shard", None) is False:
        return False
    return not limit or int(getattr(config, "num_bytes", limit + 1)) <= limit


def quiet_prefetch_crash_report(reader) -> None:
    """LitData prints its chunk-prefetch thread's crash to stderr with a full traceback (and gives no setting for
    it); the reader then raises the same error where the item is read, which `read_or_name` turns into one line
    naming the URI. The thread's report goes to the debug log instead."""
    if hasattr(reader, "setup_thread_and_download_chunk"):
        reader.setup_thread_and_download_chunk = functools.partial(setup_thread_quietly, reader,
                                                                   reader.setup_thread_and_download_chunk)


def setup_thread_quietly(reader, setup: Callable, index) -> None:
    setup(index)
    thread = getattr(reader, "_prepare_thread", None)
    if thread is not None and "_report_crash" not in vars(thread):
        thread._report_crash = log_prefetch_crash


def log_prefetch_crash(exc: BaseException) -> None:
    log.debug("LitData's chunk prefetch stopped: %s: %s", type(exc).__name__, exc)


@functools.cache
def mapping_dataset_class() -> type:
    """LitData's `StreamingDataset`, reading every chunk memory-mapped and cached when the cache keeps them all.

    Read by index (validation, test, the linear probe), LitData fetches each item's bytes from the store on every
    pass (two requests per image, every epoch); where the split fits the cache its chunks are cached instead.

    LitData maps only the chunks no other loader worker reads (a co-worker could delete a shared one while it is
    mapped). A shared chunk is read without the map, and there each item outside the decode window reads the
    whole chunk file again (64 MB per item, `PyTreeLoader._fill_decode_window_path`): with 2 workers on a warm
    cache that made streaming 0.3x the local folder (benchmarks/results/stream_speed_workers2.json). Where the
    split fits the cache nothing is ever deleted, so the shared chunks are mapped too."""
    from litdata import StreamingDataset  # lazy: the stream extra is optional

    class MappingStreamingDataset(StreamingDataset):
        def __iter__(self):
            iterator = super().__iter__()
            reader = self.cache._reader if self.cache is not None else None
            if reader is not None and keeps_every_chunk(reader):
                reader.enable_mmap_for_chunks({int(chunk) for chunk in self.worker_chunks})
            return iterator

        def _create_cache(self, worker_env):
            cache = super()._create_cache(worker_env)
            quiet_prefetch_crash_report(cache._reader)
            if keeps_every_chunk(cache._reader):  # read by index (evaluation): chunks cached, not refetched
                self._on_demand_bytes = cache._reader.on_demand_bytes = False
                cache._reader.enable_mmap_for_chunks(set(range(len(cache._reader.config._chunks or []))))
            return cache

        def __next__(self):
            return read_or_name(lambda _: super(MappingStreamingDataset, self).__next__(), None, self.input_dir.url)

    return MappingStreamingDataset


@functools.cache
def resuming_loader_class() -> type:
    """LitData's `StreamingDataLoader`, its resume applied once. LitData clears its `restore` flag only when a
    pass runs to its end, and Lightning stops a pass at its length: the epoch after a resumed one would resume
    at that end again and yield nothing. Here the flag is cleared once the resumed pass has started."""
    from litdata import StreamingDataLoader  # lazy: the stream extra is optional

    class ResumingStreamLoader(StreamingDataLoader):
        def __iter__(self):
            started = False
            for batch in super().__iter__():
                if not started:
                    self.restore, started = False, True
                yield batch

    return ResumingStreamLoader


class StreamPosition:
    """The training `StreamingDataLoader`'s state, through the datamodule's `state_dict` hooks.

    Lightning saves the loader's state in its fit loop too, but restores it only into loaders made after the
    restore; a schedule that counts steps (`trainer.estimated_stepping_batches`) makes the loader before it, and
    the epoch would start over. The datamodule's own state is restored first and reaches the loader either way.
    """

    KEY = "stream_loader"  # in the checkpoint's datamodule state (runtime/format.py)

    def __init__(self) -> None:
        self.loader = None
        self.pending: dict | None = None

    def attach(self, loader) -> None:
        self.loader = loader
        if self.pending is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(self.pending)
            self.pending = None

    def state_dict(self) -> dict:
        state = getattr(self.loader, "state_dict", None)
        return {self.KEY: state()} if state is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.pending = state.get(self.KEY)
        if self.loader is not None:
            self.attach(self.loader)


def optimized_sources(root: str, manifest: dict, storage_options: dict | None, cache_dir: str | None,
                      cache_size: str, in_chans: int = 3,
                      background: tuple[int, int, int] = (255, 255, 255)) -> dict[str, OptimizedSplit]:
    """`split -> OptimizedSplit` for train, val and test (an empty one where `optimize` wrote none)."""
    base = root.rstrip("/")
    return {split: OptimizedSplit(f"{base}/{split}", np.asarray([label for _, label in manifest["splits"].get(split, [])],
                                                                dtype=np.int64),
                                  dict(storage_options or {}), cache_dir, cache_size, in_chans, tuple(background))
            for split in ("train", "val", "test")}
