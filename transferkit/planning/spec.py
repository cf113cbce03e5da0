"""`RunSpec`: what planning decided for a run, frozen and typed. The DictConfig stops at planning.

Below planning every function receives the part of the spec it needs (`spec.data`, `spec.model`,
`spec.trainer`, ...), never the config. A spec is plain data: it serialises to a dict of JSON values
(`to_dict`) and back (`RunSpec.from_dict`), which is how it is written to `spec.json` in the run
directory and recorded in `results.json`. Group options that are some constructor's keyword
arguments (the model group for the task, the data group for the datamodule, the trainer flags for
Lightning) are kept as plain dicts, exactly as a checkpoint's hyperparameters store them.

This module imports nothing above `models` and `training.race.rules`, so every layer may use its types.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from transferkit.models.input_format import InputFormat
from transferkit.runtime.format import FORMAT_VERSION
from transferkit.errors import ConfigError, lookup

# The format of run directories and checkpoints (FORMAT_VERSION) and its migrations: transferkit.runtime.format.
# Trainer keys a head solved by L-BFGS needs: one validating epoch, whose one zero-LR step is a
# manual-optimization step (Lightning refuses clipping or accumulation there).
SOLVED_HEAD_TRAINER = {"max_epochs": 1, "gradient_clip_val": None, "accumulate_grad_batches": 1}

STRATEGIES: tuple[str, ...] = ("freeze", "partial", "full")
PLAN_STRATEGIES: tuple[str, ...] = (*STRATEGIES, "auto")
HEAD_SOLVERS: tuple[str, ...] = ("sgd", "lbfgs")  # see transferkit.tasks.head_solver and tasks/linear_probe.py
# Relative cost of one epoch of a `finetune=auto` candidate; a frozen head on cached features costs next to nothing.
EPOCH_COST = {"freeze": 0.05, "lpft-partial": 0.7, "full-llrd": 1.0, "lpft-full": 1.0, "scratch": 1.0}
FREE_COST = 0.1             # a candidate this cheap is never cut: it waits for the finisher (see run_race)


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

    def __post_init__(self) -> None:
        lookup(dict.fromkeys(PLAN_STRATEGIES), self.strategy, key="finetune.strategy")
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

    def to_dict(self) -> dict:
        return {"candidates": [c.name for c in self.candidates],
                "rungs": [{"end": r.end, "keep": r.keep} for r in self.rungs],
                "scratch": dict(self.scratch), "cost_bound": round(self.cost_bound, 3)}



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


@dataclass(frozen=True)
class TaskSpec:
    """`task.kind` and the task group's other keys (the task constructor's arguments)."""

    kind: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """The architecture, where its weights come from, the input format it was made for, and the
    model group as the task receives it (backbone, weights and in_chans resolved)."""

    backbone: str
    weights: WeightsSource
    input: InputFormat
    options: dict = field(default_factory=dict)

    @property
    def cache_dir(self) -> str | None:
        return self.options.get("cache_dir")



@dataclass(frozen=True)
class AugmentSpec:
    name: str = "light"
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    flips: bool = True


@dataclass(frozen=True)
class DataSpec:
    """The data group with the input format resolved: the datamodule's keyword arguments."""

    task: str
    seed: int
    augment: AugmentSpec
    options: dict = field(default_factory=dict)

    @property
    def root(self) -> str | None:
        return self.options.get("root")

    @property
    def embedded(self) -> str | None:
        return None if self.root else self.options.get("embedded")

    @property
    def batch_size(self) -> int:
        return int(self.options["batch_size"])

    @property
    def image_size(self) -> int:
        return int(self.options["image_size"])

    def get(self, key: str, default=None):
        return self.options.get(key, default)

    def datamodule_kwargs(self, in_chans: int) -> dict:
        extra = {"seed": self.seed, "in_chans": in_chans, "augment": self.augment.name}
        if self.task != "segmentation":
            extra["flips"] = self.augment.flips
        return {**self.options, **extra}

    def with_options(self, **changes) -> DataSpec:
        return replace(self, options={**self.options, **changes})


@dataclass(frozen=True)
class FinetuneSpec:
    """The finetune group as trained (strategy final, unless `auto` races), the race plan, the feature
    cache decision and, for `auto`, the measurement it planned from."""

    options: dict
    race: RacePlan | None = None
    cache: dict = field(default_factory=lambda: {"used": False, "requested": None, "reasons": []})
    advice: dict | None = None

    @property
    def strategy(self) -> str:
        return str(self.options.get("strategy"))

    @property
    def cache_used(self) -> bool:
        return bool(self.cache.get("used"))

    def to_dict(self) -> dict:
        race = None if self.race is None else {**self.race.to_dict(),
                                                "candidates": [asdict(c) for c in self.race.candidates]}
        return {"options": dict(self.options), "race": race, "cache": dict(self.cache), "advice": self.advice}

    @classmethod
    def from_dict(cls, record: dict) -> FinetuneSpec:
        race = record.get("race")
        plan = None if race is None else RacePlan(
            [Candidate(**c) for c in race["candidates"]], [Rung(int(r["end"]), int(r["keep"])) for r in race["rungs"]],
            dict(race["scratch"]), float(race["cost_bound"]))
        return cls(dict(record["options"]), plan, dict(record.get("cache") or {}), record.get("advice"))


@dataclass(frozen=True)
class TrainerSpec:
    """Lightning Trainer flags (the trainer group and any `trainer.<flag>=`), final."""

    flags: dict

    @property
    def max_epochs(self) -> int:
        return int(self.flags.get("max_epochs") or 1)

    @property
    def num_nodes(self) -> int:
        return int(self.flags.get("num_nodes") or 1)

    def get(self, key: str, default=None):
        return self.flags.get(key, default)

    def with_flags(self, **changes) -> TrainerSpec:
        return TrainerSpec({**self.flags, **changes})


@dataclass(frozen=True)
class CallbacksSpec:
    """What the fit's callbacks do besides checkpoints: early stopping, averaging, interval
    checkpoints, the L1 penalty and the run report."""

    early_stopping: dict = field(default_factory=lambda: {"patience": None, "monitor": None, "min_delta": 0.0})
    checkpoint_every_minutes: float | None = None
    regularization: dict | None = None
    ema: dict = field(default_factory=dict)
    swa: dict = field(default_factory=dict)
    report: dict = field(default_factory=lambda: {"enabled": True, "top_losses": 16})

    @property
    def report_enabled(self) -> bool:
        return bool(self.report.get("enabled", True))


@dataclass(frozen=True)
class OutputSpec:
    """Where the run writes, and what it continues from."""

    run_dir: str | None = None
    resume: str | None = None
    ckpt_path: str | None = None


@dataclass(frozen=True)
class RunSpec:
    """Everything a training command decided, before anything is built."""

    command: str
    seed: int
    recipe: str | None
    task: TaskSpec
    model: ModelSpec
    data: DataSpec
    finetune: FinetuneSpec
    optimizer: dict
    scheduler: dict
    trainer: TrainerSpec
    callbacks: CallbacksSpec
    outputs: OutputSpec
    lr_find: dict = field(default_factory=dict)
    advise: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    lr_search: dict | None = None
    config: dict = field(default_factory=dict, compare=False)  # the composed config (config.yaml); never read
    format_version: int = FORMAT_VERSION

    def record(self) -> dict:
        """What results.json says planning decided (`plan`)."""
        return {"weights": self.model.weights.to_dict(), "input": self.model.input.to_dict(), "notes": list(self.notes)}

    def to_dict(self) -> dict:
        out = {f: getattr(self, f) for f in ("format_version", "command", "seed", "recipe", "optimizer",
                                                 "scheduler", "lr_find", "advise", "lr_search")}
        return {**out, "task": asdict(self.task), "notes": list(self.notes),
                "model": {"backbone": self.model.backbone, "options": dict(self.model.options),
                          "weights": {**asdict(self.model.weights)}, "input": self.model.input.to_dict()},
                "data": {**asdict(self.data)}, "finetune": self.finetune.to_dict(),
                "trainer": dict(self.trainer.flags), "callbacks": asdict(self.callbacks),
                "outputs": asdict(self.outputs)}

    @classmethod
    def from_dict(cls, record: dict) -> RunSpec:
        model, data = record["model"], record["data"]
        fmt = model["input"]
        return cls(
            command=record["command"], seed=int(record["seed"]), recipe=record.get("recipe"),
            task=TaskSpec(**record["task"]),
            model=ModelSpec(model["backbone"], WeightsSource(**model["weights"]),
                            InputFormat(**{**fmt, "mean": tuple(fmt["mean"]), "std": tuple(fmt["std"])}),
                            dict(model["options"])),
            data=DataSpec(data["task"], int(data["seed"]), AugmentSpec(**data["augment"]), dict(data["options"])),
            finetune=FinetuneSpec.from_dict(record["finetune"]), optimizer=dict(record["optimizer"]),
            scheduler=dict(record["scheduler"]), trainer=TrainerSpec(dict(record["trainer"])),
            callbacks=CallbacksSpec(**record["callbacks"]), outputs=OutputSpec(**record["outputs"]),
            lr_find=dict(record.get("lr_find") or {}), advise=dict(record.get("advise") or {}),
            notes=tuple(record.get("notes") or ()), lr_search=record.get("lr_search"),
            format_version=int(record.get("format_version", FORMAT_VERSION)))

    def for_candidate(self, candidate: Candidate) -> RunSpec:
        """The spec a `finetune=auto` candidate trains with: its finetune group (and augmentation); a
        solved head's leg keeps the run's max_epochs (the race's schedule) but steps no clipping."""
        data = self.data
        if candidate.augment is not None:
            data = replace(data, augment=replace(data.augment, name=candidate.augment, mixup_alpha=0.0,
                                                 cutmix_alpha=0.0))
        flags = dict(self.trainer.flags)
        if FinetunePlan(**candidate.finetune).solves_head:  # the leg itself stops after its one epoch
            flags.update({k: v for k, v in SOLVED_HEAD_TRAINER.items() if k != "max_epochs"})
        finetune = FinetuneSpec(dict(candidate.finetune), None, self.finetune.cache, self.finetune.advice)
        return replace(self, data=data, finetune=finetune, trainer=TrainerSpec(flags))

    def for_fold(self, fold: int, run_dir: str | None) -> RunSpec:
        """One fold of a k-fold cross-validation: `data.fold` validates, written to its own directory
        (a new fit run: it resumes nothing, even when the cv run does)."""
        return replace(self, data=self.data.with_options(fold=fold), outputs=OutputSpec(run_dir=run_dir),
                       config={**self.config, "data": {**self.config.get("data", {}), "fold": fold},
                               "run_dir": run_dir, "resume": None, "ckpt_path": None})
