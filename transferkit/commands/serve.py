"""`python -m transferkit serve ckpt_path=<run dir | checkpoint | export> [serve.port=8000]`: the model
behind an HTTP server with dynamic batching (LitServe; `pip install ".[serve]"`). `POST /predict` takes an
image (multipart field `file`, or JSON `{"image": "<base64>"}`) and answers JSON (`label`, `probability`,
`top_k`) or, for segmentation, a PNG mask; `GET /health`, `GET /info`. Writes nothing; Ctrl+C stops it."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from transferkit.planning.serve import serve_spec
from transferkit.serving.server import require_litserve, serve


def model_dir(path: str) -> str:
    """The run directory of `<run>/checkpoints/<name>.ckpt`, else the folder that holds the model file."""
    folder = Path(path).parent
    return str(folder.parent if folder.name == "checkpoints" else folder)


def run(cfg: DictConfig) -> dict:
    start = time.time()
    require_litserve()  # the extra named before anything else
    spec = serve_spec(cfg)  # the config stops here: the server receives the spec
    serve(spec)
    return {"command": "serve", "checkpoint": spec.model.recorded, "host": spec.host, "port": spec.port,
            "run_dir": model_dir(spec.model.paths[0]), "wall_seconds": round(time.time() - start, 2)}
