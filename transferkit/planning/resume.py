"""`resume=`: the config a resumed run (fit, a cv run or one of its folds, a tune search) continues with.

A resumed run keeps its own `config.yaml`; only keys that do not change what is trained may be given
again (`RESUME_KEYS`). A finished `finetune=auto` race continues its winner; a race stopped mid-way
continues the race (`transferkit.training.race.progress`). What happens inside the resumed run
directory (results.json, metrics, best score) is `transferkit.training.resume`.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from transferkit.data.streaming.store import is_remote
from transferkit.config.files import load_group_option
from transferkit.models.weights import FILE_SUFFIXES
from transferkit.errors import ConfigError
from transferkit.planning.race import build_candidates, explicit_keys
from transferkit.planning.spec import SOLVED_HEAD_TRAINER
from transferkit.runtime.checkpoint_io import checkpoint_problem, describe_bad_checkpoint
from transferkit.runtime.interval_checkpoint import newer_mid_epoch
from transferkit.search.space import override_key
from transferkit.tasks.finetune import FinetunePlan
from transferkit.training.race.rules import RACE_PROGRESS, Candidate
from transferkit.training.resume import RESUME_KEYS, read_results
from transferkit.training.rundir import ENV_CV_DIR, ENV_RUN_DIR, is_ddp_child, lock_run_dir

log = logging.getLogger("transferkit")

OUTPUTS = Path("outputs")
# What a resumed search may change: how long it searches, not what a trial trains.
TUNE_RESUME_KEYS = ("resume", "tune.n_trials", "tune.timeout", "debug", "trainer.enable_progress_bar")


def run_order(run_dir: Path) -> tuple[str, str, int]:
    """outputs/<date>/<HH-MM-SS>[-N]: the order runs were started in."""
    parts = run_dir.name.split("-")
    n = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
    return run_dir.parent.name, "-".join(parts[:3]), n


def is_fit_run(run_dir: Path) -> bool:
    command = read_results(run_dir).get("command")
    return command == "fit" or command is None and (run_dir / "checkpoints").is_dir()


def is_run_of(run_dir: Path, command: str) -> bool:
    return is_fit_run(run_dir) if command == "fit" else read_results(run_dir).get("command") == command


def find_run(value: str, base: Path = OUTPUTS, command: str = "fit") -> Path:
    """The run directory `resume=` names: a path, or `last` for the newest `command` run under `base`."""
    if str(value) == "last":
        runs = [p.parent for p in base.glob("*/*/config.yaml") if is_run_of(p.parent, command)]
        if not runs:
            raise FileNotFoundError(f"resume=last: no {command} run under {base.resolve()}/ (runs live in "
                                    "outputs/<date>/<time>/); pass resume=<run directory> instead.")
        return max(runs, key=run_order).resolve()
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"resume={str(value)!r} is not a run directory; pass resume=<run directory> "
                                "(outputs/<date>/<time>) or resume=last.")
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"resume={str(value)!r} holds no config.yaml, so it is not a run directory "
                                "(or the run died before it started); start a new run instead.")
    return path.resolve()


def check_overrides(overrides: list[str], run_dir: Path) -> list[str]:
    """The keys given on the command line; any outside RESUME_KEYS is refused."""
    keys = [item.split("=", 1)[0].lstrip("+~") for item in overrides]
    for key in keys:
        if key not in RESUME_KEYS:
            raise ConfigError(f"{key} cannot change when resuming {run_dir} (it changes what is trained); "
                              f"resume keeps the run's config.yaml and accepts only {list(RESUME_KEYS[1:])}. "
                              "Start a new run to change it.")
    return keys


def check_not_running(results: dict, run_dir: Path) -> None:
    pid = results.get("pid")
    if results.get("status") != "running" or not pid or pid == os.getpid():
        return
    if results.get("host") != socket.gethostname():
        return
    try:
        os.kill(int(pid), 0)  # PermissionError: it exists, run by another user
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise ConfigError(f"resume={run_dir}: the run is still going (pid {pid}); stop it first "
                      f"(kill -TERM {pid} saves its last checkpoint), then resume.")


def check_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to continue from: `last.ckpt` (epoch end or signal), or the mid-epoch one
    (`checkpoint.every_minutes`) when that is whole and from a later step."""
    last = run_dir / "checkpoints" / "last.ckpt"
    mid = newer_mid_epoch(run_dir, last)
    if mid is not None:
        return mid
    if not last.exists():
        raise FileNotFoundError(f"resume={run_dir}: there is no checkpoints/last.ckpt (the run stopped before its "
                                "first epoch ended), so nothing can resume; start the run again.")
    problem = checkpoint_problem(last)
    if problem:
        raise ValueError(f"resume: {describe_bad_checkpoint(last, problem, last.with_name('best.ckpt'))}")
    return last


def check_race_resumable(saved: DictConfig, cfg: DictConfig, keys: list[str], run_dir: Path) -> None:
    """A `finetune=auto` run stopped mid-race resumes the race itself, as it was planned."""
    if not (run_dir / RACE_PROGRESS).is_file():
        raise FileNotFoundError(f"resume={run_dir}: this finetune=auto run stopped before its race began (there "
                                f"is no {RACE_PROGRESS}), so nothing can resume; start the run again.")
    if "trainer.max_epochs" in keys and int(cfg.trainer.max_epochs) != int(saved.trainer.max_epochs):
        raise ConfigError(f"trainer.max_epochs cannot change while resuming {run_dir} mid-race: its cuts were planned "
                          f"for trainer.max_epochs={saved.trainer.max_epochs}. Resume the race as it was, then "
                          "resume again with a larger trainer.max_epochs to train its winner longer.")


def check_data_root(saved: DictConfig, cfg: DictConfig, keys: list[str], run_dir: Path) -> None:
    """`data.root=` / `model.weights=` on resume name where the run's image folder / weights file is now
    (moved, or another machine); embedded data or named weights have no file to move. Without them, the
    recorded places must still be there."""
    recorded = saved.data.get("root")
    if "data.root" in keys and recorded is None:
        raise ConfigError(f"data.root cannot be given when resuming {run_dir}: the run trained on the embedded "
                          f"data set {saved.data.get('embedded')!r}, not a folder. Resume without data.root=.")
    if "data.root" not in keys and recorded is not None and not is_remote(str(recorded)) \
            and not Path(str(recorded)).expanduser().exists():  # an object store is checked when the data is planned
        raise FileNotFoundError(f"resume={run_dir}: the run's data.root={str(recorded)!r} does not exist here (moved, "
                                "or another machine); point it at the same images' new place: python -m "
                                f"transferkit fit resume={run_dir} data.root=<new place> (the splits are checked to "
                                "be the same files).")
    weights = str(saved.model.get("weights"))
    is_file = Path(weights).suffix in FILE_SUFFIXES
    if "model.weights" in keys and not is_file:
        raise ConfigError(f"model.weights cannot change when resuming {run_dir}: the run's weights are {weights!r}, "
                          "not a file that could have moved. Resume without model.weights=.")
    if "model.weights" not in keys and is_file and not Path(weights).expanduser().is_file():
        raise FileNotFoundError(f"resume={run_dir}: the run's model.weights={weights!r} does not exist here (moved, "
                                "or another machine); the checkpoint holds the trained weights, but the model is "
                                f"built from that file first: python -m transferkit fit resume={run_dir} "
                                "model.weights=<its new place>.")


def candidate_config(saved: DictConfig, candidate: Candidate) -> DictConfig:
    """The run's config with a race candidate's finetune group (and augmentation): what its leg trained."""
    derived = OmegaConf.create({**OmegaConf.to_container(saved, resolve=True), "finetune": candidate.finetune})
    if candidate.augment is not None:
        derived.augment.name = candidate.augment
        derived.augment.mixup_alpha = derived.augment.cutmix_alpha = 0.0
    if FinetunePlan(**candidate.finetune).solves_head:  # the leg itself stopped after its one epoch
        for key, value in SOLVED_HEAD_TRAINER.items():
            if key != "max_epochs":
                derived.trainer[key] = value
    return derived


def race_winner_config(saved: DictConfig, results: dict, run_dir: Path) -> DictConfig:
    """A finished `finetune=auto` run continues as its winner (finetune group and augmentation)."""
    winner = (results.get("auto") or {}).get("winner")
    explicit = explicit_keys(OmegaConf.to_container(saved.finetune, resolve=True),
                             load_group_option("finetune", "auto"))
    candidates = {c.name: c for c in build_candidates(explicit, use_weights=True, with_scratch=True)}
    if winner not in candidates:
        raise ConfigError(f"resume={run_dir}: results.json names the race winner {winner!r}, which is not a "
                          f"candidate of this version ({sorted(candidates)}); start a new run.")
    log.info("Resuming the winner of the finetune=auto race: %s", winner)
    return candidate_config(saved, candidates[winner])


def with_keys(saved: DictConfig, cfg: DictConfig, keys: list[str]) -> DictConfig:
    """`saved` with this session's values of `keys` (RESUME_KEYS the command line gave)."""
    with open_dict(saved):
        for key in keys:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    return saved


def config_of_resumed_run(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config to continue `cfg.resume` with: its own config.yaml plus the RESUME_KEYS given."""
    child = is_ddp_child()  # a DDP worker continues the run its parent resolved
    run_dir = Path(os.environ[ENV_RUN_DIR]) if child else find_run(str(cfg.resume))
    keys = check_overrides(overrides, run_dir)
    results = read_results(run_dir)
    if results.get("command") not in (None, "fit"):
        again = " (python -m transferkit cv resume=...)" if results["command"] == "cv" else ""
        raise ConfigError(f"resume={run_dir}: that is a {results['command']!r} run; fit resume continues fit "
                          f"runs. Resume it with its own command{again}.")
    if not child:  # a second writer stops here, at once, naming the holder (transferkit.runtime.lock)
        lock_run_dir(run_dir)
    saved = OmegaConf.load(run_dir / "config.yaml")
    check_data_root(saved, cfg, keys, run_dir)
    last: Path | None = None
    if saved.finetune.get("strategy") == "auto" and not (results.get("auto") or {}).get("winner"):
        check_race_resumable(saved, cfg, keys, run_dir)  # each candidate continues from its own checkpoint
    else:
        last = check_checkpoint(run_dir)
        if saved.finetune.get("strategy") == "auto":
            saved = race_winner_config(saved, results, run_dir)
    saved = with_keys(saved, cfg, keys)
    with open_dict(saved):
        saved.resume, saved.run_dir, saved.ckpt_path = str(run_dir), str(run_dir), str(last) if last else None
    log.info("Resuming %s from %s", run_dir, last or f"the race record {run_dir / RACE_PROGRESS}")
    return saved


def config_of_resumed_cv(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """`cv resume=<cv run directory>`: its own config.yaml plus the RESUME_KEYS given; the cv command
    skips the finished folds and resumes an interrupted one from its last.ckpt."""
    child = is_ddp_child()
    run_dir = Path(os.environ[ENV_CV_DIR]) if child else find_run(str(cfg.resume), command="cv")
    keys = check_overrides(overrides, run_dir)
    results = read_results(run_dir)
    if results.get("command") != "cv":
        raise ConfigError(f"resume={run_dir}: that is not a cv run (its results.json says command "
                          f"{results.get('command')!r}); continue a fit run with python -m transferkit fit resume=...")
    if not child:
        check_not_running(results, run_dir)
    saved = with_keys(OmegaConf.load(run_dir / "config.yaml"), cfg, keys)
    with open_dict(saved):
        saved.resume, saved.run_dir = str(run_dir), str(run_dir)
    log.info("Resuming the cv run %s", run_dir)
    return saved


def config_of_resumed_fold(cfg: DictConfig, fold_dir: Path) -> DictConfig:
    """An interrupted fold of a cv run: its own config.yaml, with this cv session's RESUME_KEYS (e.g.
    trainer.max_epochs) as the other folds get them."""
    keys = [key for key in RESUME_KEYS[1:] if OmegaConf.select(cfg, key, default=None) is not None]
    resumed = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(resumed):
        resumed.resume = str(fold_dir)
    return config_of_resumed_run(resumed, [f"{key}=" for key in keys])


def find_tune_dir(value: str) -> Path:
    """`tune resume=`: a tune directory, or `last` for the newest one under outputs/."""
    if str(value) == "last":
        dirs = [p.parent for p in OUTPUTS.glob("*/*/study.db")]
        if not dirs:
            raise FileNotFoundError(f"resume=last: no search (study.db) under {OUTPUTS.resolve()}/; "
                                    "pass resume=<tune directory>.")
        return max(dirs, key=run_order).resolve()
    path = Path(str(value)).expanduser()
    if not (path / "config.yaml").is_file() or read_results(path).get("command") != "tune":
        raise FileNotFoundError(f"resume={str(value)!r} is not a tune directory (no config.yaml and results.json "
                                "of a `tune` run); pass the directory `tune` printed.")
    return path.resolve()


def config_of_resumed_search(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """`tune resume=`: the saved search config, with only TUNE_RESUME_KEYS taken from this command line."""
    tune_dir = find_tune_dir(cfg.resume)
    check_not_running(read_results(tune_dir), tune_dir)
    saved = OmegaConf.load(tune_dir / "config.yaml")
    saved.run_dir = str(tune_dir)  # config.yaml says `.`: the directory, wherever it is now
    for item in cfg.tune.overrides:
        key = override_key(item)
        if key not in TUNE_RESUME_KEYS:
            raise ConfigError(f"{key} cannot change when resuming the search in {tune_dir}: its trials must "
                              f"share one setup; resume accepts only {list(TUNE_RESUME_KEYS[1:])}. Start a new "
                              "search to change it.")
        if key == "resume":
            continue
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
        if not key.startswith("tune."):  # e.g. debug: the trials get it too
            saved.tune.overrides = [o for o in saved.tune.overrides if override_key(o) != key] + [item]
    return saved, tune_dir
