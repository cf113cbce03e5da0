"""LP-FT (Kumar et al., ICLR 2022): `finetune.lpft=true` vs false for `partial` and `full`, few-shot digits.

`python -m transferkit fit recipe=small_similar finetune=<partial|full> finetune.lpft=<false|true>`
through the public CLI in one process, on CPU, on 10 embedded digits per class (a per-seed draw, the
same for every arm; see benchmarks/head_solver.py, whose runner this reuses), seeds paired across arms.
The recipe's LR (0.01, backbone 0.1x), schedule (cosine, 15 epochs) and `augment=none` are kept.

    python benchmarks/lpft.py [--seeds 0 1 2 3 4] [--sizes 10]

Writes `benchmarks/results/lpft.json` (every run) and `lpft.md` (the README table).
"""

from __future__ import annotations

from head_solver import main

ARMS = {
    "partial": ["recipe=small_similar", "finetune=partial", "finetune.lpft=false"],
    "partial + lpft": ["recipe=small_similar", "finetune=partial", "finetune.lpft=true"],
    "full": ["recipe=small_similar", "finetune=full", "finetune.lpft=false"],
    "full + lpft": ["recipe=small_similar", "finetune=full", "finetune.lpft=true"],
}

if __name__ == "__main__":
    main(ARMS, name="lpft", title="LP-FT vs plain fine-tuning (recipe=small_similar, digits, 10 per class)",
         default_sizes=("10",))
