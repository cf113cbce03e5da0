"""Multi-process launches (several nodes, torchrun, SLURM): one run directory for all processes.

The run directory is chosen before Lightning starts its process group, but on several nodes each
node starts its own `python -m transferkit fit` and would pick its own `outputs/<date>/<time>`.
Here the processes that each start the command meet once on the launcher's rendezvous address
(`MASTER_ADDR`:`MASTER_PORT`; under SLURM Lightning's own choice, under torchrun its agent's store):
global rank 0 chooses the directory and the others read it. Rank 0 then closes that store, so
Lightning can open its own on the same port. Processes Lightning itself starts on a node inherit the
directory through `TRANSFERKIT_RUN_DIR` (see `transferkit.training.rundir`). A shared filesystem is assumed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from transferkit.errors import ConfigError

log = logging.getLogger(__name__)

RENDEZVOUS_TIMEOUT = timedelta(minutes=30)  # as Lightning's own process-group timeout
KEY = "transferkit/run_dir"


@dataclass(frozen=True)
class Launch:
    """This process among the processes that each start the command: `index` of `count`."""

    index: int
    count: int
    host: str
    port: int
    agent_store: bool = False  # torchrun: its agent serves the store; every process is a client

    @property
    def key(self) -> str:
        return f"{KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def detect_launch(num_nodes: int = 1) -> Launch | None:
    """The launch this process is part of, from the launcher's environment; None for a lone process
    (also for the workers Lightning starts itself: they inherit the run directory)."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env and "MASTER_PORT" in env):
        count = int(env.get("WORLD_SIZE", "1"))
        return None if count < 2 else Launch(
            int(env.get("RANK", "0")), count, env.get("MASTER_ADDR", "127.0.0.1"), int(env["MASTER_PORT"]),
            agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true")
    from lightning_fabric.plugins.environments import SLURMEnvironment

    in_srun_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env  # not the batch script itself
    if SLURMEnvironment.detect() and in_srun_step and int(env.get("SLURM_NTASKS", "1")) > 1:
        slurm = SLURMEnvironment()
        return Launch(int(env.get("SLURM_PROCID", "0")), int(env["SLURM_NTASKS"]), slurm.main_address,
                      slurm.main_port)
    if num_nodes > 1:  # Lightning's variables: one process per node, which starts the node's devices
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if k not in env]
        if missing:
            raise ConfigError(f"trainer.num_nodes={num_nodes} without a launcher (SLURM, torchrun) needs "
                              f"{', '.join(missing)} set on every node: MASTER_ADDR/MASTER_PORT of the node "
                              "with NODE_RANK=0 (see docs/guides/clusters-gpus.md).")
        return Launch(int(env["NODE_RANK"]), num_nodes, env["MASTER_ADDR"], int(env["MASTER_PORT"]))
    return None


def agree_on_run_dir(launch: Launch, choose: Callable[[], Path]) -> Path:
    """Rank 0's `choose()`, for every process of `launch`."""
    from torch.distributed import TCPStore

    master = launch.index == 0 and not launch.agent_store
    try:
        store = TCPStore(launch.host, launch.port, is_master=master, wait_for_workers=False,
                         timeout=RENDEZVOUS_TIMEOUT)
    except Exception as err:  # noqa: BLE001 - torch raises several network errors
        raise RuntimeError(f"Process {launch.index} of {launch.count} cannot reach the rendezvous "
                           f"{launch.host}:{launch.port} to agree on the run directory ({err}). Check "
                           "MASTER_ADDR/MASTER_PORT on every node.") from None
    if launch.index == 0:
        path = choose()
        store.set(launch.key, str(path))
        log.info("Run directory %s: waiting for the other %d process(es) of the launch at %s:%d",
                 path, launch.count - 1, launch.host, launch.port)
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT.total_seconds()
        while int(store.add(f"{launch.key}/read", 0)) < launch.count - 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Only {int(store.add(f'{launch.key}/read', 0))} of the other "
                                   f"{launch.count - 1} processes arrived within {RENDEZVOUS_TIMEOUT}.")
            time.sleep(0.05)
        store.set(f"{launch.key}/done", "1")
    else:
        path = Path(store.get(launch.key).decode())
        store.add(f"{launch.key}/read", 1)
        store.wait([f"{launch.key}/done"])  # then rank 0 closes it: Lightning's store takes the port
        set_provisional_rank()
    del store
    log.debug("Launch process %d of %d: run directory %s", launch.index, launch.count, path)
    return path


def set_provisional_rank() -> None:
    """Not global rank 0: until Lightning sets the real rank, `rank_zero_only` code must not run here
    (Lightning reads RANK or SLURM_PROCID at import, but a node started with NODE_RANK reads as 0)."""
    from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        rank_zero_only.rank = utils_rank_zero_only.rank = 1
