"""A real client for a real `python -m transferkit serve` process on localhost (stdlib only: urllib, no
mocks): start it on a free port, wait for `/health`, post images, stop its whole process group. Used by
tests/test_serve.py and benchmarks/serve_load.py."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def request(url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    """(status, content type, body) of one request; a 4xx/5xx is returned, not raised."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def healthy(server: Server) -> bool:
    try:
        return request(server.url + "/health", timeout=5)[0] == 200
    except OSError:
        return False


def start_server(ckpt_path: Path | str, cwd: Path, *overrides: str, wait: float = 240) -> Server:
    """`python -m transferkit serve` in its own process group, logging to `cwd/serve.log`; returns once
    `/health` answers 200 (or raises with the log's tail)."""
    port, log = free_port(), cwd / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", f"ckpt_path={ckpt_path}",
                                    f"serve.port={port}", *overrides], cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, port, log)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if healthy(server):
            return server
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"serve did not answer /health in {wait} s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server, wait: float = 30) -> int | None:
    """SIGTERM (as `docker stop` sends), then the process group if anything is left; the exit code."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(wait)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.process.pid, signal.SIGKILL)  # whatever of this server's own group is left
    except (ProcessLookupError, PermissionError):
        pass
    server.process.wait(wait)
    return server.process.returncode


def multipart(data: bytes, field: str = "file", filename: str = "image.png",
              content_type: str = "application/octet-stream") -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def as_json(data: bytes) -> tuple[bytes, dict]:
    return json.dumps({"image": base64.b64encode(data).decode()}).encode(), {"Content-Type": "application/json"}


def post_image(server: Server, data: bytes, form: bool = True):
    body, headers = multipart(data) if form else as_json(data)
    return request(server.url + "/predict", body, headers)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def malformed_requests(max_bytes: int, max_pixels: int) -> list[tuple[str, bytes, dict]]:
    """One request of each bad kind: (kind, body, headers); every one should get a 4xx."""
    good = png_bytes(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    side = int(max_pixels ** 0.5) + 64
    bomb = io.BytesIO()
    Image.new("L", (side, side)).save(bomb, format="PNG")  # a few KB that decode to > max_pixels pixels
    return [
        ("not an image", *multipart(b"this is not an image " * 20)),
        ("truncated image", *multipart(good[: len(good) // 2])),
        ("decompression bomb", *multipart(bomb.getvalue())),
        ("body over max_bytes", *multipart(os.urandom(max_bytes + 1024))),
        ("wrong content type", good, {"Content-Type": "image/png"}),
        ("no content type", good, {}),
        ("form without file", *multipart(good, field="image")),
        ("JSON not JSON", b'{"image": ', {"Content-Type": "application/json"}),
        ("JSON without image", b'{"picture": "x"}', {"Content-Type": "application/json"}),
        ("JSON image not base64", b'{"image": "%%%not base64%%%"}', {"Content-Type": "application/json"}),
        ("JSON truncated image", *as_json(good[: len(good) // 2])),
    ]
