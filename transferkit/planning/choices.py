"""The typed choices a spec is made of: the finetune group (`FinetunePlan`), the `finetune=auto` race
plan (`Candidate`, `Rung`, `RacePlan`) and where the weights come from (`WeightsSource`).

Like `transferkit.planning.spec`, a leaf of frozen dataclasses every layer may import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transferkit.errors import ConfigError, lookup


STRATEGIES: tuple[str, ...] = ("freeze", "partial", "full")
PLAN_STRATEGIES: tuple[str, ...] = (*STRATEGIES, "auto")
HEAD_SOLVERS: tuple[str, ...] = ("sgd", "lbfgs")  # see transferkit.tasks.head_solver and tasks/linear_probe.py
# Relative cost of one epoch of a `finetune=auto` candidate; a frozen head on cached features costs next to nothing.
EPOCH_COST = {"freeze": 0.05, "lpft-partial": 0.7, "full-llrd": 1.0, "lpft-full": 1.0, "scratch": 1.0}
FREE_COST = 0.1             # a candidate this cheap is never cut: it waits for the finisher (see run_race)
RACE_RULE = ("the highest validation score (the run's metric on the last two validations, ± bootstrap SE over "
             "validation images) survives; an exact tie goes to the cheaper plan")
COMBINES: tuple[str, ...] = ("ensemble", "best")  # finetune.combine: the run's model after a race


@dataclass(frozen=True)
class FinetunePlan:
    """The `finetune` config group: what trains, and at which learning-rate scale."""

    strategy: str = "freeze"
    trainable_stages: int = 2
    backbone_lr_scale: float = 0.1
    layer_decay: float | None = None
    unfreeze_at_epoch: int | None = None
    cache_features: bool | None = None
    # Defaults as before these keys existed (how older checkpoints read); conf/finetune sets lbfgs.
    head_solver: str = "sgd"   # strategy freeze: "lbfgs" solves the head once instead of SGD epochs
    lpft: bool = False         # partial/full: solve the head on frozen features first (LP-FT)
    combine: str = "best"      # strategy auto: the run's model after the race (COMBINES; RacePlan.combine)

    def __post_init__(self) -> None:
        lookup(dict.fromkeys(PLAN_STRATEGIES), self.strategy, key="finetune.strategy")
        lookup(dict.fromkeys(COMBINES), self.combine, key="finetune.combine")
        lookup(dict.fromkeys(HEAD_SOLVERS), self.head_solver, key="finetune.head_solver")
        if self.lpft not in (True, False):
            raise ConfigError(f"finetune.lpft={self.lpft!r} must be true or false.")
        if int(self.trainable_stages) != self.trainable_stages or self.trainable_stages < 1:
            raise ConfigError(
                f"finetune.trainable_stages={self.trainable_stages!r} must be an integer >= 1; "
                "use strategy=freeze to train no backbone stage."
            )
        if not self.backbone_lr_scale > 0:
            raise ConfigError(
                f"finetune.backbone_lr_scale={self.backbone_lr_scale!r} must be > 0 "
                "(backbone LR = head LR x this); use strategy=freeze to keep the backbone fixed."
            )
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(
                f"finetune.layer_decay={self.layer_decay!r} must lie in (0, 1] (e.g. 0.75), or be null."
            )
        if self.unfreeze_at_epoch is not None:
            if self.unfreeze_at_epoch < 0:
                raise ConfigError(f"finetune.unfreeze_at_epoch={self.unfreeze_at_epoch!r} must be >= 0 or null.")
            if self.strategy == "freeze":
                raise ConfigError(
                    f"finetune.unfreeze_at_epoch={self.unfreeze_at_epoch!r} needs strategy partial or full "
                    "(what to unfreeze); with strategy=freeze set it to null."
                )

    @property
    def solves_head(self) -> bool:
        """The head is solved once (L-BFGS) and never stepped: strategy freeze with head_solver lbfgs."""
        return self.strategy == "freeze" and self.head_solver == "lbfgs"

    @property
    def probes_first(self) -> bool:
        """The head is solved on frozen features before the first epoch (head_solver lbfgs or LP-FT)."""
        return self.solves_head or bool(self.lpft)


@dataclass(frozen=True)
class Candidate:
    """One plan in the race: the finetune group it trains with, and how it starts."""

    name: str
    finetune: dict
    use_weights: bool = True  # starts from the planned weights (scratch: random init)
    augment: str | None = None  # freeze trains on cached features: no random augmentation

    @property
    def cost(self) -> float:
        return EPOCH_COST[self.name]

    @property
    def free(self) -> bool:
        """Costs next to nothing (a head solved on cached features): it stays in the race to the end,
        outside the cuts, and meets the finisher there. Cutting it early would only reward it for
        starting fast, since its score is final after one epoch while the others are still warming up."""
        return self.cost <= FREE_COST


@dataclass(frozen=True)
class Rung:
    end: int   # the candidates still in train until this epoch of their schedule ...
    keep: int  # ... then this many continue


@dataclass(frozen=True)
class RacePlan:
    """What planning decided for `finetune=auto`: who races, where the cuts fall, and why."""

    candidates: list[Candidate]
    rungs: list[Rung]
    scratch: dict          # {"entered": bool, "why": str}
    cost_bound: float      # worst-case epoch-equivalents / trainer.max_epochs
    left_out: tuple[str, ...] = ()  # candidates the cost bound left out of the field
    # the run's model: `ensemble` averages every candidate that finished; `best` keeps the winner alone
    # (a race recorded before the key existed: best)
    combine: str = "best"

    def to_dict(self) -> dict:
        return {"candidates": [c.name for c in self.candidates],
                "rungs": [{"end": r.end, "keep": r.keep} for r in self.rungs],
                "scratch": dict(self.scratch), "cost_bound": round(self.cost_bound, 3),
                "left_out": list(self.left_out), "rule": RACE_RULE, "combine": self.combine}



# What results.json repeats of a weights record.
RECORD_SUMMARY = ("backbone", "in_chans", "image_size", "mean", "std", "interpolation", "hub_id",
                  "source_data", "recipe", "date")


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights of a run come from, decided by planning before anything is built.

    kind: `none`, `house`, `file`, `hf-cache` (a file found in the Hugging Face cache) or `hub`
    (timm downloads them). `path` is set for house, file and hf-cache; `record` holds what is known
    about how the weights were made (house/backbone.json, a checkpoint's data config, timm's tag).
    """

    kind: str
    requested: str
    path: str | None = None
    record: dict = field(default_factory=dict)

    def describe(self) -> str:
        where = {"none": "random init", "hub": "download from the Hugging Face hub"}.get(self.kind, self.path)
        return f"{self.kind}: {where}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "requested": self.requested, "path": self.path,
                "record": {k: v for k, v in self.record.items() if k in RECORD_SUMMARY}}
