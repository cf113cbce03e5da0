"""One request read and checked in the HTTP process, before it joins a batch: its size, its content type,
its image (multipart field `file`, or JSON `{"image": "<base64>"}`) decoded by fit's decode path with the
pixel limit. A bad request gets a 4xx with one line of JSON (`{"detail": ...}`) and never reaches a batch,
so one bad image cannot fail the others. Imports FastAPI (the `serve` extra)."""

from __future__ import annotations

import base64
import binascii
import io
import json

from fastapi import HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from transferkit.data.decode import UnreadableImageError, open_image
from transferkit.serving.spec import UploadLimits

FORM, JSON = "multipart/form-data", "application/json"
USAGE = f'send the image as {FORM} (field "file") or as {JSON} {{"image": "<base64>"}}'


def refuse(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=" ".join(detail.split()))  # one line


def limits_of(request: Request) -> UploadLimits:
    """The limits `serve` set on the app (`app.state.upload_limits`), else the defaults."""
    return getattr(request.app.state, "upload_limits", None) or UploadLimits()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (413) before it is read when its Content-Length is over `max_bytes`; a body without
    a length (chunked) gets 411, so no request is read without a bound."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise refuse(411, f"the request has no Content-Length; {USAGE}.")
    if int(length) > max_bytes:
        raise refuse(413, f"the request body is {int(length)} bytes, over serve.max_bytes={max_bytes}.")
    return await request.body()


async def form_image(request: Request) -> bytes:
    """The bytes of the multipart field `file`."""
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise refuse(400, f'the form has no file field "file" (fields: {sorted(form.keys())}); {USAGE}.')
    return await upload.read()


def json_image(body: bytes) -> bytes:
    """The bytes of `{"image": "<base64>"}` (a `data:image/...;base64,` prefix is allowed)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refuse(400, f"the body is not JSON ({error}); {USAGE}.") from None
    encoded = payload.get("image") if isinstance(payload, dict) else None
    if not isinstance(encoded, str):
        raise refuse(400, f'the JSON has no string "image"; {USAGE}.')
    if encoded.startswith("data:") and "," in encoded:
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise refuse(400, f'"image" is not base64 ({error}); {USAGE}.') from None


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """The uploaded file fully decoded (first frame, EXIF orientation applied) by fit's decode path; the
    pixel count checked from the header before decoding."""
    if not data:
        raise refuse(400, f"the image is empty; {USAGE}.")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:  # noqa: BLE001 - whatever Pillow raises on a file it cannot identify
        width = height = 0
    if width * height > max_pixels:
        raise refuse(413, f"the image is {width} x {height} = {width * height} pixels, over "
                          f"serve.max_pixels={max_pixels} (a decompression bomb?); send a smaller image.")
    try:
        return open_image(io.BytesIO(data))
    except UnreadableImageError as error:
        status = 413 if "decompression-bomb" in error.reason else 400
        raise refuse(status, f"the upload is not an image that can be read: {error.reason}") from None


async def read_image(request: Request) -> Image.Image:
    """The image of a `POST /predict` request, or the 4xx that says what is wrong with it."""
    limits = limits_of(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (FORM, JSON):
        raise refuse(415, f"Content-Type {content_type or 'none'!r} is not accepted; {USAGE}.")
    body = await read_body(request, limits.max_bytes)
    data = await form_image(request) if content_type == FORM else json_image(body)
    return await run_in_threadpool(decode_upload, data, limits.max_pixels)
