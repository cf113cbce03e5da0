"""A real S3-compatible server on localhost (moto's server mode) for the streaming tests; no client mocks.

`s3_server` starts one per test session on a free port and points the standard AWS variables at it
(`AWS_ENDPOINT_URL`, test credentials); `upload_folder` copies a local folder into a bucket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """The endpoint URL of a moto server started for this session (skips without the stream extra)."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._port}"
    finally:
        server.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch) -> dict[str, str]:
    """The AWS variables that reach the local server, set for this test (and returned for subprocesses)."""
    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def make_bucket(name: str) -> None:
    import boto3

    client = boto3.client("s3")
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


def upload_folder(folder: Path, bucket: str, prefix: str) -> str:
    """Copy every file under `folder` to `s3://bucket/prefix/...`; returns that URI."""
    import boto3

    make_bucket(bucket)
    client = boto3.client("s3")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def put_object(uri: str, data: bytes) -> None:
    import boto3

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)


def delete_object(uri: str) -> None:
    import boto3

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    boto3.client("s3").delete_object(Bucket=bucket, Key=key)


class CuttingProxy:
    """A TCP proxy in front of the S3 server that, once armed, cuts the network at the first request for a chunk
    (`chunk-` in a request): that connection, every open one and every later one fail, as when a link goes down
    mid-run. Real sockets between a real client and a real server; the client is not mocked."""

    def __init__(self, target: str) -> None:
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.armed, self.cut = threading.Event(), threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        tail = b""
        try:
            while not self.cut.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if from_client and self.armed.is_set() and b"chunk-" in tail + data:
                    self.close()
                    break
                tail = data[-16:]
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()

    def close(self) -> None:
        """Cut now: the listener and every connection through it are closed."""
        self.cut.set()
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise


def fit_local_and_remote(folder: Path, uri: str, overrides: list[str], tmp_path: Path) -> tuple[dict, dict]:
    """`fit` on the local folder and on the same images in the store (runs in `tmp_path/local`, `/remote`):
    each run's results.json and splits.json, by name."""
    import json

    from transferkit.cli import app as cli

    runs = {}
    for name, root in (("local", str(folder)), ("remote", uri)):
        results = cli.run(["fit", f"data.root={root}", *overrides, f"run_dir={tmp_path / name}"])
        assert results["status"] == "completed"
        runs[name] = results
    return runs, {name: json.loads((tmp_path / name / "splits.json").read_text()) for name in runs}
