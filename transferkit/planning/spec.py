"""`RunSpec`: what planning decided for a run, frozen and typed. The DictConfig stops at planning.

Below planning every function receives the part of the spec it needs (`spec.data`, `spec.model`,
`spec.trainer`, ...), never the config. A spec is plain data: it serialises to a dict of JSON values
(`to_dict`) and back (`RunSpec.from_dict`), which is how it is written to `spec.json` in the run
directory and recorded in `results.json`. Group options that are some constructor's keyword
arguments (the model group for the task, the data group for the datamodule, the trainer flags for
Lightning) are kept as plain dicts, exactly as a checkpoint's hyperparameters store them.

A leaf: from transferkit it imports only other leaves of types (`planning.choices`, `models.input_format`,
`runtime.format`), so every layer may use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from transferkit.models.input_format import InputFormat
from transferkit.runtime.format import FORMAT_VERSION
from transferkit.planning.choices import (  # noqa: F401 - re-exported: the spec's parts
    EPOCH_COST, FREE_COST, HEAD_SOLVERS, PLAN_STRATEGIES, RECORD_SUMMARY, STRATEGIES, Candidate, FinetunePlan,
    RacePlan, Rung, WeightsSource)

# The format of run directories and checkpoints (FORMAT_VERSION) and its migrations: transferkit.runtime.format.
# Trainer keys a head solved by L-BFGS needs: one validating epoch, whose one zero-LR step is a
# manual-optimization step (Lightning refuses clipping or accumulation there).
SOLVED_HEAD_TRAINER = {"max_epochs": 1, "gradient_clip_val": None, "accumulate_grad_batches": 1}


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
            dict(race["scratch"]), float(race["cost_bound"]), tuple(race.get("left_out") or ()))
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
    checkpoint_every_steps: int | None = None  # a mid-epoch checkpoint after every K-th step (None: off)
    regularization: dict | None = None
    ema: dict = field(default_factory=dict)
    swa: dict = field(default_factory=dict)
    report: dict = field(default_factory=lambda: {"enabled": True, "top_losses": 16})
    monitor: str | None = None  # checkpoint.monitor: the metric best.ckpt is chosen on (None: the task's own)

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
    imbalance: dict | None = None  # the train split's class balance and what it decided (planning/balance.py)
    calibration: str = "none"  # temperature: fit one after training (tasks/calibration.py); none: do not
    config: dict = field(default_factory=dict, compare=False)  # the composed config (config.yaml); never read
    format_version: int = FORMAT_VERSION

    def record(self) -> dict:
        """What results.json says planning decided (`plan`)."""
        record = {"weights": self.model.weights.to_dict(), "input": self.model.input.to_dict(), "notes": list(self.notes)}
        return record if self.imbalance is None else {**record, "imbalance": dict(self.imbalance)}

    def to_dict(self) -> dict:
        out = {f: getattr(self, f) for f in ("format_version", "command", "seed", "recipe", "optimizer",
                                                 "scheduler", "lr_find", "advise", "lr_search", "imbalance")}
        return {**out, "task": asdict(self.task), "notes": list(self.notes), "calibration": self.calibration,
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
            notes=tuple(record.get("notes") or ()), lr_search=record.get("lr_search"), imbalance=record.get("imbalance"),
            calibration=str(record.get("calibration") or "none"),
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
