"""The LitServe API: `decode_request` gets an image already checked by `requests.read_image` in the HTTP
process (a FastAPI dependency, resolved before the request is queued: a bad one never joins a batch),
`predict` runs a batch of them through the one predictor, `encode_response` gives JSON or a PNG.
Imports LitServe: only `serving.server` imports this module, once the `serve` extra is known installed."""

# No `from __future__ import annotations`: LitServe and FastAPI read decode_request's annotation, the
# dependency that reads the request, as an object.
import logging
from typing import Annotated

import litserve as ls
import torch
from fastapi import Depends, Response
from fastapi.responses import JSONResponse
from PIL import Image

from transferkit.inference.predictor import load_predictor
from transferkit.inference.spec import CheckpointSpec
from transferkit.serving.answers import PNG, answer_batch
from transferkit.serving.requests import read_image

log = logging.getLogger("transferkit")


class ImageAPI(ls.LitAPI):
    """`POST /predict`: one image per request, batched by LitServe up to `max_batch_size`."""

    def __init__(self, model: CheckpointSpec, top_k: int, max_batch_size: int, batch_timeout: float,
                 torch_threads: int | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model, self.top_k, self.torch_threads, self.predictor = model, top_k, torch_threads, None

    def setup(self, device: str) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)  # this inference process's intra-op threads
        if str(device).startswith("cuda"):
            torch.cuda.set_device(torch.device(device))  # the predictor runs on the current CUDA device
        self.predictor = load_predictor(self.model)

    def decode_request(self, request: Annotated[Image.Image, Depends(read_image)]) -> Image.Image:
        return request

    def predict(self, x):
        batched = isinstance(x, list)  # a list when batching is on (max_batch_size > 1)
        answers = answer_batch(self.predictor, x if batched else [x], self.top_k)
        return answers if batched else answers[0]

    def encode_response(self, output) -> Response:
        if isinstance(output, bytes):
            return Response(content=output, media_type=PNG)
        if "error" in output:
            return JSONResponse({"detail": output["error"]}, status_code=422)
        return JSONResponse(output)
