"""Start the server: the model loaded once here (a bad `ckpt_path` fails in one line before any worker
starts; its classes and input format become `GET /info`'s model metadata), then LitServe's server with
the API, the dynamic batching, the workers and the request limits. Blocks until Ctrl+C."""

from __future__ import annotations

import importlib
import logging
import os
import signal

from PIL import Image

from transferkit.errors import ConfigError
from transferkit.inference.predictor import Predictor, load_predictor
from transferkit.serving.spec import ServeSpec

log = logging.getLogger("transferkit")

SERVE_EXTRA_HINT = 'pip install ".[serve]"'


def require_litserve() -> None:
    """Stop in one line when the `serve` extra (LitServe, python-multipart) is not installed."""
    missing = []
    for name in ("litserve", "python_multipart"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"serve needs LitServe and python-multipart ({missing} not installed); "
                          f"install the serve extra: {SERVE_EXTRA_HINT}")


def model_metadata(predictor: Predictor, spec: ServeSpec) -> dict:
    """What `GET /info` says about the model: task, classes, input format (per ensemble member), the model
    files, TTA, and what `POST /predict` accepts and returns."""
    return {
        "task": predictor.kind,
        "classes": list(predictor.class_names),
        "input_format": [fmt.to_dict() for fmt in predictor.input_formats],
        "model": spec.model.recorded,
        "exported": spec.model.exported,
        "tta": spec.model.tta,
        "calibration": getattr(spec.model, "calibration", None),  # the checkpoint's temperature, or none
        "request": 'POST /predict: multipart/form-data field "file", or application/json {"image": "<base64>"}',
        "response": {"segmentation": "image/png class-index mask",
                     "multilabel": "application/json {labels, probabilities}"}.get(
                         predictor.kind, "application/json {label, probability, top_k}"),
        "top_k": spec.top_k,
        "max_bytes": spec.limits.max_bytes,
        "max_pixels": spec.limits.max_pixels,
        "max_batch_size": spec.max_batch_size,
        "batch_timeout": spec.batch_timeout,
        "torch_threads": spec.torch_threads,
    }


def stop_on_sigterm() -> None:
    """SIGTERM (`docker stop`, a process manager) shuts down like Ctrl+C: LitServe then stops its HTTP and
    inference processes instead of leaving them behind."""
    owner = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != owner:  # an HTTP process forked from here, stopped by LitServe: exit quietly
            raise SystemExit(0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def serve(spec: ServeSpec) -> None:
    """Serve `spec.model` on `spec.host:spec.port` until interrupted."""
    require_litserve()
    import litserve as ls  # lazy: the serve extra is optional

    from transferkit.serving.api import ImageAPI  # lazy: imports LitServe (the serve extra)

    metadata = model_metadata(load_predictor(spec.model), spec)
    api = ImageAPI(spec.model, spec.top_k, spec.max_batch_size, spec.batch_timeout, spec.torch_threads)
    server = ls.LitServer(api, accelerator=spec.accelerator, workers_per_device=spec.workers_per_device,
                          timeout=spec.timeout, model_metadata=metadata)
    server.app.state.upload_limits = spec.limits  # read by requests.read_image in the (forked) HTTP processes
    # Pillow's own decompression-bomb guard, for this server process: a second check behind read_image's.
    Image.MAX_IMAGE_PIXELS = max(int(Image.MAX_IMAGE_PIXELS or 0), spec.limits.max_pixels)
    log.info("Serving %s (%s, %d classes) on http://%s:%d: POST /predict, GET /health, GET /info",
             spec.model.recorded, metadata["task"], len(metadata["classes"]), spec.host, spec.port)
    stop_on_sigterm()
    server.run(host=spec.host, port=spec.port, log_level=spec.log_level, generate_client_file=False)
