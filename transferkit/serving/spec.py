"""What `serve` serves and how, as planning reads it from the `serve` group: plain frozen values."""

from __future__ import annotations

from dataclasses import dataclass

from transferkit.inference.spec import CheckpointSpec

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the addresses LitServe binds
ACCELERATORS = ("auto", "cpu", "cuda")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True)
class UploadLimits:
    """What one request may hold: its body in bytes and its image in pixels (a decompression bomb)."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class ServeSpec:
    """The model (`ckpt_path`: a run directory, checkpoints or an exported file), the address, the dynamic
    batching (`max_batch_size` requests per forward pass, waiting at most `batch_timeout` seconds to fill),
    the inference processes and the limits each request is checked against before it joins a batch."""

    model: CheckpointSpec
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    batch_timeout: float = 0.005
    workers_per_device: int = 1
    torch_threads: int | None = None  # per inference process; None: torch's default
    accelerator: str = "auto"
    timeout: float = 30.0
    limits: UploadLimits = UploadLimits()
    top_k: int = 3
    log_level: str = "info"
