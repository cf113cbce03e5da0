"""Which launch a process belongs to, and how its processes agree on one run directory."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from transferkit.errors import ConfigError
from transferkit.runtime.rendezvous import Launch, agree_on_run_dir, detect_launch

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID",
               "TORCHELASTIC_USE_AGENT_STORE", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_STEP_ID", "SLURM_STEPID",
               "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_NODELIST", "SLURM_NTASKS_PER_NODE")


@pytest.fixture
def clean_env(monkeypatch):
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_a_lone_process_is_no_launch(clean_env) -> None:
    assert detect_launch() is None
    clean_env.setenv("SLURM_NTASKS", "8")  # an sbatch script running python itself, outside srun
    clean_env.setenv("SLURM_PROCID", "0")
    assert detect_launch() is None


def test_torchrun_slurm_and_lightning_launches(clean_env) -> None:
    for key, value in {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "node0", "MASTER_PORT": "29500",
                       "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_USE_AGENT_STORE": "True"}.items():
        clean_env.setenv(key, value)
    assert detect_launch() == Launch(3, 4, "node0", 29500, agent_store=True)
    for key in LAUNCH_VARS:
        clean_env.delenv(key, raising=False)
    for key, value in {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "5", "SLURM_STEP_ID": "0",
                       "SLURM_JOB_ID": "1234",
                       "MASTER_ADDR": "node0", "MASTER_PORT": "15234"}.items():
        clean_env.setenv(key, value)
    assert detect_launch() == Launch(5, 8, "node0", 15234)
    for key in LAUNCH_VARS:
        clean_env.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="trainer.num_nodes=2.*MASTER_ADDR, MASTER_PORT, NODE_RANK"):
        detect_launch(num_nodes=2)
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29501", "NODE_RANK": "1"}.items():
        clean_env.setenv(key, value)
    assert detect_launch(num_nodes=2) == Launch(1, 2, "127.0.0.1", 29501)


def test_every_process_takes_rank_zeros_run_dir(tmp_path, monkeypatch) -> None:
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    chosen = tmp_path / "run"
    got: dict[int, Path] = {}

    def other(index: int) -> None:
        got[index] = agree_on_run_dir(Launch(index, 3, "127.0.0.1", port), lambda: tmp_path / f"wrong{index}")

    threads = [threading.Thread(target=other, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    got[0] = agree_on_run_dir(Launch(0, 3, "127.0.0.1", port), lambda: chosen)
    for thread in threads:
        thread.join(timeout=30)
    assert got == {0: chosen, 1: chosen, 2: chosen}
    with socket.socket() as sock:  # the rendezvous is closed: Lightning can take the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
