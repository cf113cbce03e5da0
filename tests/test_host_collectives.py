"""Host-side (gloo) agreements between DDP ranks: what two real processes decide together."""

from __future__ import annotations

import json
from pathlib import Path

import torch.multiprocessing as mp


def _agree_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from transferkit.runtime.host_collectives import any_rank, host_group, rank_zero_says, release

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    group = host_group()
    answers = {"only_rank1": any_rank(rank == 1, group), "none": any_rank(False, group),
               "rank0_true": rank_zero_says(rank == 0, group), "rank0_false": rank_zero_says(rank == 1, group)}
    release(group)
    dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(answers))


def test_ranks_agree_on_flags_over_a_host_group(tmp_path):
    mp.spawn(_agree_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    answers = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert answers[0] == answers[1] == {"only_rank1": True, "none": False, "rank0_true": True, "rank0_false": False}
