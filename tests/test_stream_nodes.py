"""2 processes x 2 "nodes" on localhost (torchrun) stream one optimized data set from the same S3 store: each
rank trains on its own disjoint, equal-length shard, and every rank ends with the same weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_class_folder
from tests.s3_store import s3_endpoint, s3_env, upload_folder  # noqa: F401

pytest.importorskip("litdata")
PROBE = Path(__file__).with_name("stream_probe.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_two_processes_stream_disjoint_equal_shards_and_agree(tmp_path, s3_env, test_resnet_weights):
    from transferkit.cli import app as cli

    folder = write_class_folder(tmp_path / "images", per_class=12)
    cli.run(["optimize", f"data.root={upload_folder(folder, 'nodes', 'raw')}", "out=s3://nodes/optimized",
             "data.val_fraction=0.2", "data.test_fraction=0.2", f"run_dir={tmp_path / 'optimize'}"])
    sample_log, cwd, port = tmp_path / "samples.jsonl", tmp_path / "cwd", free_port()
    cwd.mkdir()
    procs = []
    for node in (0, 1):
        env = {**os.environ, **s3_env, "TRANSFERKIT_SAMPLE_LOG": str(sample_log), "OMP_NUM_THREADS": "1",
               "NO_ALBUMENTATIONS_UPDATE": "1"}
        for key in ("TRANSFERKIT_RUN_DIR", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
            env.pop(key, None)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
               f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}", str(PROBE), "fit",
               "data.root=s3://nodes/optimized", "model.backbone=test_resnet", f"model.weights={test_resnet_weights}",
               "data.image_size=32", "data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu",
               "trainer.devices=2", "trainer.num_nodes=2", "trainer.strategy=ddp", "trainer.max_epochs=2",
               "finetune=full", "augment=none", "trainer.enable_progress_bar=false",
               f"data.stream_cache={tmp_path / f'cache{node}'}"]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    lines = [json.loads(line) for line in sample_log.read_text().splitlines()]
    weights = {line["rank"]: line["weights"] for line in lines if "weights" in line}
    assert sorted(weights) == [0, 1, 2, 3] and len(set(weights.values())) == 1  # identical on every rank
    for epoch in (0, 1):
        shards = [[i for line in lines if line.get("epoch") == epoch and line["rank"] == rank for i in line["indices"]]
                  for rank in range(4)]
        assert len({len(shard) for shard in shards}) == 1 and shards[0], shards  # equal, non-empty
        seen = [i for shard in shards for i in shard]
        assert len(seen) == len(set(seen)), f"epoch {epoch}: ranks share samples {shards}"
