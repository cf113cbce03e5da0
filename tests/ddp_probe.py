"""`python tests/ddp_probe.py <command> key=value ...`: `python -m transferkit` with a test-only callback
that writes, per global rank, what that process evaluated and a checksum of its trained weights
into `$TRANSFERKIT_PROBE_DIR/rank<r>.json` (for the multi-process tests; Lightning re-launches this
script for its DDP workers, so they carry the callback too)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytorch_lightning as pl


def weights_checksum(module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(-1).numpy().tobytes())
    return digest.hexdigest()


class Probe(pl.Callback):
    def __init__(self) -> None:
        self.record: dict = {"val_images": [], "test_images": 0}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.record["val_images"].append(0)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.record["val_images"][-1] += int(batch[0].shape[0])

    def on_train_end(self, trainer, pl_module) -> None:
        self.record["weights"] = weights_checksum(pl_module)
        self.record["requires_grad"] = sum(p.requires_grad for p in pl_module.parameters())

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.record["test_images"] += int(batch[0].shape[0])

    def on_test_end(self, trainer, pl_module) -> None:
        self.record.update({"rank": trainer.global_rank, "world_size": trainer.world_size,
                            "run_dir": trainer.default_root_dir,
                            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}})
        out = Path(os.environ["TRANSFERKIT_PROBE_DIR"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps(self.record))


def main() -> None:
    from transferkit.training import builders
    from transferkit.cli import app as cli
    guards = builders.run_guard_callbacks
    builders.run_guard_callbacks = lambda checkpoints: [*guards(checkpoints), Probe()]
    cli.main()


if __name__ == "__main__":
    main()
