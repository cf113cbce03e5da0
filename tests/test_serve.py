"""`python -m transferkit serve`: a real server process on localhost (a tiny fit's run directory) and a
real HTTP client (urllib, tests/serve_client.py). Answers go through the one predictor; every bad request
gets a 4xx with one line of JSON and the server keeps serving; nothing is written into its directory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_class_folder
from tests.serve_client import (REPO, healthy, malformed_requests, multipart, png_bytes, post_image, request,
                                start_server, stop_server)
from transferkit.cli import app as cli
from transferkit.errors import ConfigError
from transferkit.inference.predictor import Predictor, load_predictor, predict_inputs
from transferkit.inference.spec import CheckpointSpec
from transferkit.serving.answers import answer_batch

pytest.importorskip("litserve")
MAX_BYTES, MAX_PIXELS = 200_000, 1_000_000


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, test_resnet_weights) -> Path:
    """A tiny classification run (cat, dog) as the `fast` fixture makes it."""
    root = tmp_path_factory.mktemp("serve")
    data = write_class_folder(root / "images")
    cli.run(["fit", f"data.root={data}", "model.backbone=test_resnet", f"model.weights={test_resnet_weights}",
             "model.in_chans=3", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
             "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=1", "report.enabled=false",
             "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"run_dir={root / 'run'}"])
    return root / "run"


@pytest.fixture(scope="module")
def server(fitted, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    running = start_server(fitted, cwd, f"serve.max_bytes={MAX_BYTES}", f"serve.max_pixels={MAX_PIXELS}",
                           "serve.max_batch_size=4", "serve.batch_timeout=0.05", "serve.log_level=warning")
    yield running
    assert stop_server(running) == 0, running.log.read_text()[-2000:]
    assert sorted(p.name for p in cwd.iterdir()) == ["serve.log"]  # no client.py, nothing else written


def image(seed: int, size: int = 40) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (size, size + 8, 3), dtype=np.uint8))


def test_predict_answers_what_the_predictor_gives_for_a_form_upload_and_base64_json(server, fitted):
    data = image(1)
    answers = []
    for form in (True, False):
        status, content_type, body = post_image(server, data, form)
        assert status == 200 and content_type.startswith("application/json"), body
        answers.append(json.loads(body))
    assert answers[0] == answers[1]
    answer = answers[0]
    assert [t["label"] for t in answer["top_k"]][0] == answer["label"] and len(answer["top_k"]) == 2
    assert sum(t["probability"] for t in answer["top_k"]) == pytest.approx(1, abs=1e-4)
    predictor = load_predictor(CheckpointSpec((str(fitted / "checkpoints" / "best.ckpt"),), "best.ckpt"))
    row = predict_inputs(predictor, [Image.open(io.BytesIO(data))], [0], top_k=2)
    row = row.iloc[0] if hasattr(row, "iloc") else row[0]
    assert answer["label"] == row["label"] and answer["probability"] == pytest.approx(row["probability"], abs=1e-5)


def test_health_and_info_describe_the_model(server):
    assert healthy(server)
    status, _, body = request(server.url + "/info")
    model = json.loads(body)["model"]
    assert status == 200 and model["task"] == "classification" and model["classes"] == ["cat", "dog"]
    assert model["input_format"][0]["image_size"] == 32 and model["max_bytes"] == MAX_BYTES


@pytest.mark.parametrize("kind", [k for k, _, _ in malformed_requests(MAX_BYTES, MAX_PIXELS)])
def test_a_bad_request_gets_a_4xx_with_one_line_of_json_and_the_server_keeps_serving(server, kind):
    body, headers = next((b, h) for k, b, h in malformed_requests(MAX_BYTES, MAX_PIXELS) if k == kind)
    status, content_type, answer = request(server.url + "/predict", body, headers)
    assert 400 <= status < 500 and content_type.startswith("application/json"), (status, answer)
    detail = json.loads(answer)["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    expected = {"decompression bomb": 413, "body over max_bytes": 413, "wrong content type": 415}
    assert status == expected.get(kind, status)
    assert post_image(server, image(2))[0] == 200


def test_bad_images_sent_with_good_ones_never_fail_a_batch(server):
    bad = [(b, h) for k, b, h in malformed_requests(MAX_BYTES, MAX_PIXELS) if k in ("not an image", "truncated image")]
    jobs = [("good", *multipart(image(i))) for i in range(8)] + [("bad", *bad[i % 2]) for i in range(8)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: (job[0], request(server.url + "/predict", job[1], job[2])[0]), jobs))
    assert [s for k, s in results if k == "good"] == [200] * 8
    assert all(400 <= s < 500 for k, s in results if k == "bad")


@pytest.mark.slow
def test_load_16_clients_and_1000_malformed_requests_then_health(server):
    """A bounded local load: 16 concurrent clients send 160 good and 1,000 malformed requests (every kind in
    turn); every good one gets 200, every bad one a 4xx, and /health still answers."""
    kinds = malformed_requests(MAX_BYTES, MAX_PIXELS)
    jobs = [("good", *multipart(image(i))) for i in range(160)] + [(k, b, h) for k, b, h in islice(cycle(kinds), 1000)]
    order = np.random.default_rng(0).permutation(len(jobs))
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: (jobs[i][0], request(server.url + "/predict", jobs[i][1], jobs[i][2])[0]),
                                order))
    good = [s for k, s in results if k == "good"]
    bad = [s for k, s in results if k != "good"]
    assert good == [200] * 160 and len(bad) == 1000 and all(400 <= s < 500 for s in bad), sorted(set(bad))
    assert healthy(server)


def test_segmentation_answers_a_png_of_the_class_index_mask():
    def scores(views, size):  # class 1 on the left half, class 0 on the right, at the image's own size
        height, width = size
        out = torch.zeros(1, 2, height, width)
        out[:, 1, :, : width // 2] = 1
        return out

    predictor = Predictor("segmentation", ["background", "thing"], [3], [lambda image: {"image": torch.zeros(3, 8, 8)}],
                          scores)
    (png,) = answer_batch(predictor, [Image.new("RGB", (10, 6))], top_k=3)
    mask = np.asarray(Image.open(io.BytesIO(png)))
    assert mask.shape == (6, 10) and (mask[:, :5] == 1).all() and (mask[:, 5:] == 0).all()


@pytest.mark.parametrize("override, key", [("serve.host=10.1.2.3", "serve.host"), ("serve.port=80", "serve.port"),
                                           ("serve.max_batch_size=0", "serve.max_batch_size"),
                                           ("serve.max_bytes=-1", "serve.max_bytes")])
def test_a_bad_serve_key_is_named_before_anything_loads(override, key, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cli.run(["serve", f"ckpt_path={tmp_path}", override])


@pytest.mark.parametrize("calibration", ["none", "temperature"])
def test_serve_takes_the_calibration_key(calibration, fitted):
    from transferkit.cli.compose import compose_config
    from transferkit.planning.serve import serve_spec

    spec = serve_spec(compose_config([f"ckpt_path={fitted}", f"calibration={calibration}"]))
    assert spec.model.calibration == calibration


def test_serve_without_its_extra_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['litserve'] = None; from transferkit.cli.app import main; "
            f"main(['serve', 'ckpt_path={tmp_path}'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and 'pip install ".[serve]"' in lines[0] and "Traceback" not in done.stderr


@pytest.mark.slow
def test_an_exported_model_is_served_with_its_own_preprocessing_and_answers_as_the_checkpoint(server, fitted,
                                                                                          tmp_path):
    exported = cli.run(["export", f"ckpt_path={fitted / 'checkpoints' / 'best.ckpt'}", "format=torchscript",
                        f"run_dir={tmp_path / 'export'}"])["model"]
    other = start_server(exported, tmp_path, "serve.log_level=warning")
    try:
        status, _, body = request(other.url + "/info")
        assert json.loads(body)["model"]["exported"] is True
        for seed in (3, 4):
            from_export, from_checkpoint = post_image(other, image(seed)), post_image(server, image(seed))
            assert from_export[0] == from_checkpoint[0] == 200
            a, b = json.loads(from_export[2]), json.loads(from_checkpoint[2])
            assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    finally:
        assert stop_server(other) == 0


@pytest.mark.slow
def test_a_segmentation_run_answers_its_mask_as_a_png_at_the_image_size(tmp_path, test_resnet_weights):
    cli.run(["fit", "task=segmentation", "data=segmentation", "data.embedded_length=32", "data.image_size=32",
             "model.backbone=test_resnet", f"model.weights={test_resnet_weights}", "model.in_chans=3",
             "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu",
             "trainer.devices=1", "report.enabled=false", "trainer.enable_progress_bar=false",
             "trainer.enable_model_summary=false", f"run_dir={tmp_path / 'run'}"])
    running = start_server(tmp_path / "run", tmp_path, "serve.log_level=warning")
    try:
        data = image(5, size=36)
        status, content_type, body = post_image(running, data)
        assert status == 200 and content_type == "image/png"
        mask = np.asarray(Image.open(io.BytesIO(body)))
        predictor = load_predictor(CheckpointSpec((str(tmp_path / "run" / "checkpoints" / "best.ckpt"),), "best.ckpt"))
        expected = predict_inputs(predictor, [Image.open(io.BytesIO(data))], [0])[0]
        assert mask.shape == (36, 44) and np.array_equal(mask, expected)
    finally:
        assert stop_server(running) == 0
