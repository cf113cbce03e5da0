"""Several processes: exact validation/test metrics under DDP, and two "nodes" on localhost."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROBE, fit_two_process_ddp, write_class_folder
from transferkit.cli import app as cli
pytestmark = pytest.mark.slow


def read_probes(probe_dir: Path, ranks: int = 2) -> list[dict]:
    return [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in range(ranks)]


def test_ddp_writes_one_run_directory_and_counts_every_image_once(tmp_path, test_resnet_weights) -> None:
    # 9 validation and 9 test images on 2 processes: a padding sampler would evaluate 10.
    data = write_class_folder(tmp_path / "odd", classes=("a", "b", "c"), per_class=3,
                              splits=("train", "val", "test"))
    probes, cwd = tmp_path / "probes", tmp_path / "cwd"
    probes.mkdir(), cwd.mkdir()
    fit_two_process_ddp(data, test_resnet_weights, cwd, "trainer.max_epochs=1",
                        "augment=none", "trainer.enable_progress_bar=false", probe_dir=probes)
    runs = [p.parent for p in cwd.glob("outputs/*/*/results.json")]  # both ranks share rank 0's directory
    assert len(runs) == 1 and len(list(cwd.glob("outputs/*/*"))) == 1, list(cwd.rglob("*"))
    ranks = read_probes(probes)
    assert sorted(r["test_images"] for r in ranks) == [4, 5]
    assert sorted(r["val_images"][-1] for r in ranks) == [4, 5]
    ddp = json.loads((runs[0] / "results.json").read_text())
    assert ddp["data"]["test_size"] == 9
    # The report gathers both ranks' test outputs: every test image once (DistributedSampler's padding dropped).
    rows = list(csv.DictReader((runs[0] / "report" / "predictions.csv").open()))
    assert sorted(int(r["index"]) for r in rows) == list(range(9))
    assert all(Path(r["path"]).parent.name == r["true"] for r in rows)  # targets stayed with their images
    # The same checkpoint tested in one process gives the same numbers.
    single = cli.run(["test", f"ckpt_path={runs[0] / ddp['best_checkpoint']}", f"run_dir={tmp_path / 'single'}",
                      "trainer.devices=1", "trainer.strategy=auto", "trainer.accelerator=cpu"])
    for key in ("test/acc", "test/f1"):
        assert ddp["metrics"][key] == single["metrics"][key], key
    assert ddp["metrics"]["test/loss"] == pytest.approx(single["metrics"]["test/loss"], abs=1e-6)
    assert all(r["metrics"]["test/acc"] == ddp["metrics"]["test/acc"] for r in ranks)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_localhost_share_one_run_and_the_same_weights(image_folder, tmp_path,
                                                                   test_resnet_weights) -> None:
    """Two `fit` processes started as two nodes of one CPU process each (Lightning's variables)."""
    cwd, probes = tmp_path / "cwd", tmp_path / "probes"
    cwd.mkdir(), probes.mkdir()
    port = free_port()
    cmd = [sys.executable, str(PROBE), "fit", f"data.root={image_folder}", "model.backbone=test_resnet",
           f"model.weights={test_resnet_weights}", "data.image_size=32", "data.batch_size=2",
           "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2",
           "trainer.strategy=ddp", "trainer.max_epochs=2", "finetune=partial", "finetune.unfreeze_at_epoch=1",
           "finetune.trainable_stages=1", "augment=none", "trainer.enable_progress_bar=false"]
    procs = []
    for node in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node),
               "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
               "TRANSFERKIT_PROBE_DIR": str(probes)}
        for key in ("TRANSFERKIT_RUN_DIR", "LOCAL_RANK", "RANK"):
            env.pop(key, None)
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = list(cwd.glob("outputs/*/*"))
    assert len(runs) == 1, runs
    results = json.loads((runs[0] / "results.json").read_text())
    assert results["status"] == "completed"
    ranks = read_probes(probes)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["run_dir"] == ranks[1]["run_dir"] == str(runs[0].resolve())
    # After the unfreeze at epoch 1, the top stage trains: the ranks still hold the same weights.
    assert ranks[0]["requires_grad"] > 2 and ranks[0]["requires_grad"] == ranks[1]["requires_grad"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # The trainer's test metrics (the calibration scores are computed after it, on rank 0 alone).
    tested = {k: v for k, v in results["metrics"].items() if k.startswith("test/") and k in ranks[0]["metrics"]}
    assert "test/acc" in tested and all(r["metrics"][k] == pytest.approx(v, abs=1e-6) for r in ranks for k, v in tested.items())


def test_ddp_eval_loss_is_the_mean_over_images_when_ranks_hold_uneven_batches(tmp_path, test_resnet_weights) -> None:
    """10 test images in batches of 3 on 2 processes: each rank evaluates 5 as a batch of 3 and one of 2,
    so the mean of the batch means is not the mean over images; test/loss must be the latter (the
    report's per-image losses, from the gathered logits, give it independently)."""
    data = write_class_folder(tmp_path / "even", classes=("a", "b"), per_class=5, splits=("train", "val", "test"))
    for k in (0, 1):  # two test images in the other class's folder: losses that differ by orders of magnitude
        (data / "test" / "a" / f"{k}.png").rename(data / "test" / "b" / f"from_a{k}.png")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFERKIT_RUN_DIR", None)
    cmd = [sys.executable, "-m", "transferkit", "fit", f"data.root={data}", "model.backbone=test_resnet",
           f"model.weights={test_resnet_weights}", "data.image_size=32", "data.batch_size=3", "data.num_workers=0",
           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=1",
           "augment=none", "trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(cwd.glob("outputs/*/*/results.json")).parent
    results = json.loads((run / "results.json").read_text())
    rows = list(csv.DictReader((run / "report" / "predictions.csv").open()))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == results["data"]["test_size"] == 10
    per_image = sum(losses) / len(losses)
    assert max(losses) - min(losses) > 0.5  # spread enough that a mean of batch means would be off
    assert results["metrics"]["test/loss"] == pytest.approx(per_image, abs=1e-5)
