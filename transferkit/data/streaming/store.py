"""An object store behind `data.root=s3://...` (gs://, azure:// through the same fsspec layer).

Credentials and endpoints come the standard way (the AWS/GCS/Azure environment variables and config
files, `AWS_ENDPOINT_URL` for S3-compatible stores) plus `data.storage_options` for anything else. The
store is checked once, before training: missing extra, credentials or bucket each stop with one line.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from transferkit.data.decode import UnreadableImageError
from transferkit.errors import ConfigError

log = logging.getLogger(__name__)

STREAM_EXTRA_HINT = 'pip install ".[stream]"'
# scheme -> (fsspec protocol, the package that speaks it)
SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3", "s3fs"), "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs"),
    "az": ("abfs", "adlfs"), "azure": ("abfs", "adlfs"), "abfs": ("abfs", "adlfs"),
}
READ_TRIES = 4  # a network error is retried with backoff (0.5 s, 1 s, 2 s), then the run stops
BACKOFF_S = 0.5
NETWORK_MODULES = frozenset({"botocore", "urllib3", "aiohttp", "obstore", "requests", "s3transfer"})
NETWORK_NAMES = ("EndpointConnectionError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "Connection refused",
                 "Connection reset")


class StoreUnreachableError(ConnectionError):
    """Reading the object store kept failing after the retries; the message (one line) names the URI.

    Raised in a DataLoader worker, torch re-raises it in the main process with the worker's traceback as its
    message; the line this error was raised with is kept, so the user still reads one line.
    """

    def __init__(self, message: str = "") -> None:
        marker = f"{type(self).__name__}: "
        if "\nOriginal Traceback" in message and marker in message:  # torch's ExceptionWrapper.reraise
            message = message.rsplit(marker, 1)[1].strip().splitlines()[0]
        super().__init__(message)


def is_network_failure(err: BaseException) -> bool:
    """Whether `err` (or what caused it) is the network or the store failing, not the data or the code:
    connection and timeout errors, and the store clients' own (botocore, urllib3, aiohttp, obstore)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        module = type(err).__module__.split(".")[0]
        if isinstance(err, (ConnectionError, TimeoutError)) or module in NETWORK_MODULES:
            return True
        if type(err).__name__ == "ChunkWaitTimeoutError" or any(name in str(err) for name in NETWORK_NAMES):
            return True
        err = err.__cause__ or err.__context__
    return False


def stream_failure(err: BaseException, uri: str) -> StoreUnreachableError:
    """One line for a stream that kept failing: the URI, the last cause, what to do."""
    cause = " ".join(str(err).split())[:200] or type(err).__name__
    return StoreUnreachableError(f"streaming {uri!r} failed after retries with backoff "
                                 f"({type(err).__name__}: {cause}); check the network and the store's endpoint, "
                                 "then resume the run (fit resume=<run dir>).")


class NamedBytes(io.BytesIO):
    """An object's bytes as an open file named by its URI (what decode errors and skip records show)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


def is_remote(root: str | os.PathLike | None) -> bool:
    """Whether `data.root` names an object store (`s3://`, `gs://`, `azure://`, ...)."""
    if root is None:
        return False
    scheme, sep, _ = str(root).partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b/` -> (`s3`, `bucket/a/b`)."""
    scheme, _, rest = uri.partition("://")
    return scheme.lower(), rest.strip("/")


@dataclass
class ObjectStore:
    """An fsspec filesystem and the folder (`bucket/prefix`) that `uri` names; picklable into workers."""

    uri: str
    options: dict = field(default_factory=dict)
    _fs: Any = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return split_uri(self.uri)[0]

    @property
    def path(self) -> str:
        return split_uri(self.uri)[1]

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def fs(self):
        if self._fs is None:
            self._fs = open_filesystem(self.scheme, self.options, key="data.root", uri=self.uri)
        return self._fs

    def __getstate__(self) -> dict:
        return {"uri": self.uri, "options": self.options, "_fs": None}  # each worker opens its own client

    def uri_of(self, path: str | PurePosixPath) -> str:
        return f"{self.scheme}://{path}"

    def list_files(self) -> list[str]:
        """Every object under the folder, as paths relative to it (object listing only, nothing read)."""
        base = self.path
        found = self.fs.find(base, detail=False)
        return sorted(p[len(base) + 1:] for p in found if p.startswith(base + "/") and not p.endswith("/"))

    def read_bytes(self, path: str | PurePosixPath) -> bytes:
        """An object's bytes; a network error is retried with backoff, then stops naming the URI.

        Raises:
            FileNotFoundError: the object is gone (the caller records it as unreadable).
            StoreUnreachableError: the store kept failing.
        """
        for attempt in range(READ_TRIES):
            try:
                return self.fs.cat_file(str(path))
            except (FileNotFoundError, PermissionError):
                raise
            except Exception as err:  # noqa: BLE001 - botocore/aiohttp errors have no common base
                if attempt == READ_TRIES - 1:
                    raise StoreUnreachableError(
                        f"data.root={self.uri!r}: reading {self.uri_of(path)!r} failed {READ_TRIES} times "
                        f"({type(err).__name__}: {err}); check the network and the store's endpoint, then "
                        "resume the run (fit resume=<run dir>).") from err
                log.warning("Reading %s failed (%s); retrying.", self.uri_of(path), err)
                time.sleep(BACKOFF_S * 2 ** attempt)
        raise AssertionError("unreachable")

    def open_file(self, path: str | PurePosixPath) -> NamedBytes:
        """An object as the file the one decode path opens (`load_image`, `load_mask`).

        Raises:
            UnreadableImageError: the object is gone ("object not found").
            StoreUnreachableError: the store kept failing.
        """
        uri = self.uri_of(path)
        try:
            return NamedBytes(self.read_bytes(path), uri)
        except FileNotFoundError as err:
            raise UnreadableImageError(uri, "object not found") from err


def open_filesystem(scheme: str, options: dict, key: str, uri: str):
    """The fsspec filesystem for `scheme`; one line naming the extra when its package is missing."""
    protocol, package = SCHEMES[scheme]
    try:
        import fsspec  # lazy: the stream extra is optional

        return fsspec.filesystem(protocol, **dict(options or {}))
    except ImportError as err:
        extra = STREAM_EXTRA_HINT if package == "s3fs" else f"{STREAM_EXTRA_HINT} and pip install {package}"
        raise ConfigError(f"{key}={uri!r} needs the stream extra ({package}); install it: {extra}.") from err


def check_store(store: ObjectStore, key: str = "data.root") -> None:
    """List the folder once: missing credentials, bucket or access each stop with one line."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or (store.options or {}).get("endpoint_url")
    where = f" at {endpoint}" if endpoint else ""
    try:
        try:
            found = store.fs.ls(store.path, detail=False)  # one level: cheap however large the store
        except FileNotFoundError:
            if store.fs.exists(store.bucket):
                found = []
            else:
                raise
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{key}={store.uri!r}: the bucket {store.bucket!r} does not exist{where}, or "
                                "is not visible with these credentials; check the name (and AWS_ENDPOINT_URL for "
                                "an S3-compatible store).") from err
    except PermissionError as err:
        raise PermissionError(f"{key}={store.uri!r}: access denied ({err}); give these credentials read access "
                              "to the bucket, or set other ones.") from err
    except Exception as err:  # noqa: BLE001 - botocore's NoCredentialsError, an unreachable endpoint
        name = type(err).__name__
        if "Credential" in name or "credential" in str(err):
            raise PermissionError(f"{key}={store.uri!r}: no credentials found for the store ({name}); set "
                                  "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a profile, GOOGLE_APPLICATION_"
                                  "CREDENTIALS, AZURE_STORAGE_*), or data.storage_options.") from err
        raise StoreUnreachableError(f"{key}={store.uri!r}: the store cannot be reached{where} ({name}: {err}); "
                                    "check the endpoint and the network.") from err
    if not found:
        raise FileNotFoundError(f"{key}={store.uri!r} holds no objects; point it at the folder (prefix) that "
                                "holds train/ or the class folders.")
    store.fs.invalidate_cache()  # the scan lists afresh
