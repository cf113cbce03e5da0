# transferkit's model server (python -m transferkit serve) on CPU, serving what is mounted at /model:
# a run directory, a checkpoint or an exported model.onnx / model.torchscript.pt (README "Serve a model").
#
#   docker build -t transferkit-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/outputs/2026-01-01/12-00-00:/model:ro" transferkit-serve
#   docker run --rm -p 8000:8000 -v "$PWD/outputs/.../model.onnx:/model/model.onnx:ro" \
#       -v "$PWD/outputs/.../model.meta.json:/model/model.meta.json:ro" transferkit-serve ckpt_path=/model/model.onnx
#
# Arguments after the image name are config keys (serve.max_batch_size=16, serve.workers_per_device=2, ...).
# ONNX models need the export extra: docker build --build-arg EXTRAS=serve,export -t transferkit-serve .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=serve
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 PIP_NO_CACHE_DIR=1

# CPU-only torch + torchvision first (a matching pair from PyTorch's index); pip keeps them below.
RUN pip install torch torchvision --index-url "${TORCH_INDEX}"

WORKDIR /opt/transferkit
COPY pyproject.toml README.md ./
COPY transferkit transferkit
COPY conf conf
COPY recipes recipes
RUN pip install ".[${EXTRAS}]"

RUN useradd --create-home transferkit
USER transferkit
WORKDIR /home/transferkit
EXPOSE 8000
# SIGTERM (docker stop) shuts the server down like Ctrl+C: HTTP and inference processes included.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
ENTRYPOINT ["python", "-m", "transferkit", "serve", "ckpt_path=/model", "serve.host=0.0.0.0", "serve.port=8000"]
CMD []
