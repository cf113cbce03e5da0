"""`python tests/stream_probe.py fit key=value ...`: `python -m transferkit` with a test-only per-sample log for
a streamed, optimized data.root: after each training step, one JSON line in `$TRANSFERKIT_SAMPLE_LOG` with the
rank, epoch, global step and the optimized items (their stored `index`) that step trained on; at the end of
training, one line per rank with a checksum of its weights. With
`$TRANSFERKIT_STEP_SLEEP` each step also waits that many seconds (time for a test to kill the run mid-epoch)."""

from __future__ import annotations

import json
import os
import time
from collections import deque

import pytorch_lightning as pl

FETCHED: deque = deque()  # training items in the order the loader decoded them (num_workers=0: this process)
TRAINERS: list = []


class SampleLog(pl.Callback):
    def setup(self, trainer, pl_module, stage) -> None:
        TRAINERS[:] = [trainer]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        indices = [FETCHED.popleft() for _ in range(len(batch[1]))]  # the loader may have fetched ahead
        line = {"rank": trainer.global_rank, "epoch": trainer.current_epoch, "step": trainer.global_step,
                "indices": indices}
        with open(os.environ["TRANSFERKIT_SAMPLE_LOG"], "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        time.sleep(float(os.environ.get("TRANSFERKIT_STEP_SLEEP", "0")))

    def on_train_end(self, trainer, pl_module) -> None:
        from ddp_probe import weights_checksum  # beside this script

        line = {"rank": trainer.global_rank, "world_size": trainer.world_size, "weights": weights_checksum(pl_module)}
        with open(os.environ["TRANSFERKIT_SAMPLE_LOG"], "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def main() -> None:
    from transferkit.cli import app as cli
    from transferkit.data.streaming import optimized
    from transferkit.training import builders

    decode = optimized.DecodeSample.__call__

    def logged(self, item):
        if TRAINERS and TRAINERS[0].training:  # not validation's or test's items
            FETCHED.append(int(item["index"]))
        return decode(self, item)

    optimized.DecodeSample.__call__ = logged
    guards = builders.run_guard_callbacks
    builders.run_guard_callbacks = lambda checkpoints: [*guards(checkpoints), SampleLog()]
    cli.main()


if __name__ == "__main__":
    main()
