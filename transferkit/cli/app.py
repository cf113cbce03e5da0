"""`python -m transferkit <command> key=value ...`: compose the Hydra config and run a command.

This is the only module that uses Hydra. Recipes in `recipes/` are registered as the
`recipe` group, so `recipe=small_similar` selects `recipes/small_similar.yaml`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
import sys

from omegaconf import DictConfig, OmegaConf, open_dict

from transferkit.planning.rebuild import config_of_checkpoint_run  # noqa: F401 - used by run(), and by tests as cli.*
from transferkit.config.explain import (explain_config_error, flat_values, hydra_outside_sweep, unknown_key_message,
                                       wrong_types)
from transferkit.config.files import config_keys, package_dir, recipe_names  # noqa: F401 - recipe_names: cli.* in tests
from transferkit.errors import ConfigError, did_you_mean

log = logging.getLogger("transferkit")

COMMANDS: dict[str, str] = {
    "fit": "transferkit.commands.fit",
    "cv": "transferkit.commands.cv",
    "test": "transferkit.commands.test",
    "predict": "transferkit.commands.predict",
    "pretrain": "transferkit.commands.pretrain",
    "advise": "transferkit.commands.advise",
    "show-augs": "transferkit.commands.show_augs",
    "plot-lr": "transferkit.commands.plot_lr",
    "lr-find": "transferkit.commands.lr_find",
    "tune": "transferkit.commands.tune",
    "summary": "transferkit.commands.summary",
    "show-features": "transferkit.commands.show_features",
    "export": "transferkit.commands.export",
    "report": "transferkit.commands.report",
}
USAGE = (
    "usage: python -m transferkit <command> [-m] [key=value ...]   (-m: sweep, e.g. optimizer.lr=0.01,0.001)\n"
    f"commands: {', '.join(COMMANDS)}\n"
    "examples:\n"
    "  python -m transferkit fit recipe=small_similar\n"
    "  python -m transferkit fit recipe=small_similar data.root=/path/to/images trainer.max_epochs=5\n"
    "  python -m transferkit predict ckpt_path=outputs/.../checkpoints/best.ckpt input=/path/to/images\n"
    "  python -m transferkit cv recipe=small_similar data.num_folds=5\n"
    "See README.md for the config keys."
)


class UsageError(ValueError):
    """The command line itself is wrong (unknown command, malformed override)."""


@functools.lru_cache(maxsize=1)
def register_recipes() -> None:
    """Expose every `recipes/*.yaml` as an option of the `recipe` group (once a process: Hydra's
    ConfigStore keeps them)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path in sorted(package_dir("recipes").glob("*.yaml")):
        store.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")


def expand_trainer_overrides(overrides: list[str]) -> list[str]:
    """Let any Lightning Trainer flag be set as `trainer.<flag>=...` without Hydra's `+` prefix."""
    known, flags = config_keys("trainer"), None
    expanded = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if key.startswith("trainer.") and key.count(".") == 1 and key.split(".", 1)[1] not in known:
            if flags is None:  # imports Lightning: only for a flag the trainer group does not spell out
                from transferkit.training.builders import trainer_flags

                flags = trainer_flags()
            if key.split(".", 1)[1] in flags:
                item = "+" + item
        expanded.append(item)
    return expanded


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose `conf/config.yaml` with the recipe and the command-line overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    given = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"{item!r} is not a key=value override (e.g. trainer.max_epochs=5).")
    register_recipes()
    overrides, recipe = register_recipe_file(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(package_dir("conf")), version_base="1.3"):
            cfg = compose("config", overrides=expand_trainer_overrides(overrides))
    except ConfigCompositionException as err:
        message = unknown_key_message(err, given, compose_config)
        if message is None:
            raise
        raise ConfigError(message) from None
    finally:
        GlobalHydra.instance().clear()
    keys = [o.split("=", 1)[0].lstrip("+~") for o in given]
    groups = [key != "recipe" and (package_dir("conf") / key).is_dir() for key in keys]  # model=..., finetune=...
    if not all(groups):  # values from the command line or a recipe: checked against the groups' defaults
        problems = wrong_types(cfg, group_defaults(tuple(o for o, group in zip(given, groups) if group)))
        if problems:
            raise ConfigError(" ".join(problems))
    with open_dict(cfg):
        cfg.recipe = recipe  # recorded in config.yaml and results.json
    return cfg


@functools.lru_cache(maxsize=16)
def group_defaults(choices: tuple[str, ...]) -> dict:
    """What the group choices alone (`model=resnet50`, ...) compose to, as {dotted key: value}."""
    return flat_values(compose_config(list(choices)))


def register_recipe_file(overrides: list[str]) -> tuple[list[str], str | None]:
    """The recipe the overrides choose (a name, or a file's absolute path); `recipe=path/to/my.yaml`
    becomes an option of the `recipe` group, and its override names that option."""
    from hydra.core.config_store import ConfigStore

    from transferkit.config.files import is_recipe_file, load_recipe_file
    from transferkit.cli.overrides import plain_value

    chosen = [plain_value(o.split("=", 1)[1], parse_value) for o in overrides if o.split("=", 1)[0].lstrip("+") == "recipe"]
    if not chosen or not is_recipe_file(chosen[-1]):
        return overrides, chosen[-1] if chosen else None
    try:
        path, node = load_recipe_file(chosen[-1])
    except ConfigError as err:
        raise UsageError(str(err)) from None
    name = "file-" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    ConfigStore.instance().store(group="recipe", name=name, node=OmegaConf.create(node), package="_global_")
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+") != "recipe"]
    return [*kept, f"recipe={name}"], str(path)


def parse_value(text: str):
    """The value Hydra's override grammar reads from `text` (the part after `key=`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(f"key={text}").value()


def configure_logging(debug: bool) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must not phone home
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")


def run(argv: list[str]) -> dict:
    """Run one command (or with `-m` a sweep of it); returns the result dict (used by tests)."""
    multirun, argv = any(a in MULTIRUN_FLAGS for a in argv), [a for a in argv if a not in MULTIRUN_FLAGS]
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise UsageError(USAGE)
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}.{did_you_mean(command, COMMANDS)}\n{USAGE}")
    if multirun:
        return run_sweep(command, overrides)
    if stray := hydra_outside_sweep(overrides):
        raise UsageError(stray)
    cfg = compose_config(overrides)
    if command in ("test", "advise", "show-augs", "show-features", "export") and cfg.ckpt_path:
        cfg = config_of_checkpoint_run(cfg, overrides)
    if command == "tune":  # each trial composes this command line with its sampled values
        with open_dict(cfg):
            cfg.tune.overrides = list(overrides)
    if cfg.get("resume") and command != "tune":  # tune resume=<dir> continues its own study
        if command not in ("fit", "cv"):
            raise UsageError(f"resume={cfg.resume} continues a fit run (python -m transferkit fit resume=...) "
                             "or a cv run (python -m transferkit cv resume=...).")
        from transferkit.training.resume import config_of_resumed_cv, config_of_resumed_run

        cfg = (config_of_resumed_cv if command == "cv" else config_of_resumed_run)(cfg, overrides)
    module = importlib.import_module(COMMANDS[command])
    from transferkit.training.console import quiet_console

    with quiet_console(bool(cfg.debug)):
        return module.run(cfg, compose_config) if command == "tune" else module.run(cfg)


def run_for_python(argv: list[str]) -> dict:
    """`run(argv)` for the Python API (transferkit.api): usage errors and Hydra's and OmegaConf's composition
    errors become a `ConfigError` with the one line `main` prints, and never a `SystemExit`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return run(argv)
    except UsageError as err:  # from Python there is no command line: a bad recipe file, a malformed override
        raise ConfigError(str(err)) from None
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(explain_config_error(err)) from err


# --- sweeps (`<command> -m key=a,b ...`): Hydra's parser expands the grid, transferkit.search.sweep runs each job
# through run() (why not Hydra's own runner: see transferkit/search/sweep.py).

MULTIRUN_FLAGS = ("-m", "--multirun")
SWEEPABLE = ("fit", "test", "pretrain")


def run_sweep(command: str, overrides: list[str]) -> dict:
    """Expand the grid and compose every job's config (a bad value fails before anything trains), then run it."""
    from transferkit.search.launchers import launcher_of, refusal
    from transferkit.search.sweep import run_sweep as run_jobs

    if command not in SWEEPABLE:
        raise UsageError(f"-m sweeps the commands {list(SWEEPABLE)}, not {command!r}.")
    try:
        launcher = launcher_of(command, [o for o in overrides if o.startswith("hydra")])
    except ConfigError as err:
        raise UsageError(str(err)) from None
    jobs, run_dir = expand_sweep([o for o in overrides if not o.startswith("hydra")])
    for job in jobs:
        reason = refusal(compose_config(list(job.overrides)).trainer, launcher)
        if reason:
            raise UsageError(reason)
    return run_jobs(command, jobs, launcher, run_dir, run_job, [command, "-m", *overrides])


def expand_sweep(overrides: list[str]) -> tuple[list, str | None]:
    """Hydra's grid (comma lists, range(), choice(), glob() over group options) as sweep Jobs,
    and the sweep directory `run_dir=` asks for."""
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from transferkit.search.launchers import Job

    for item in overrides:
        if "=" not in item:
            raise UsageError(f"{item!r} is not a key=value override (e.g. optimizer.lr=0.01,0.001).")
    register_recipes()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(package_dir("conf")), version_base="1.3"):
        parsed = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader()).parse_overrides(overrides)
        values = {o.get_key_element(): list(o.sweep_string_iterator()) for o in parsed if o.is_sweep_override()}
        grid = BasicSweeper.split_arguments(parsed, None)[0]  # glob() lists group options through the loader
    GlobalHydra.instance().clear()
    for key, found in values.items():
        if not found:
            raise UsageError(f"{key}=... matches nothing to sweep over; see `python -m transferkit --help`.")
        if key.lstrip("+") == "run_dir":
            raise UsageError("run_dir= cannot be swept: it names the sweep's directory (each job gets <run_dir>/<n>).")
    if any(o.split("=", 1)[0].lstrip("+") == "resume" for o in grid[0]):
        raise UsageError("resume=... continues one run in place; it cannot be part of a sweep.")
    run_dirs = [o.split("=", 1)[1] for o in grid[0] if o.split("=", 1)[0].lstrip("+") == "run_dir"]
    jobs = [Job(n, tuple(o for o in point if o.split("=", 1)[0].lstrip("+") != "run_dir"),
                {k: v for k, v in (o.split("=", 1) for o in point) if k in values})
            for n, point in enumerate(grid)]
    return jobs, run_dirs[-1] if run_dirs else None


def run_job(argv: list[str]) -> dict:
    """One sweep job: run() with logging set up (a submitit job starts in a fresh process)."""
    configure_logging(any(a in ("debug=true", "debug=True") for a in argv))
    return run(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = any(a in ("debug=true", "debug=True") for a in argv) or os.environ.get("TRANSFERKIT_DEBUG") == "1"
    configure_logging(debug)
    try:
        results = run(argv)
    except UsageError as err:
        sys.stderr.write(f"{err}\n")
        raise SystemExit(2) from None
    except Exception as err:  # noqa: BLE001 - one clear line for users, traceback on request
        guards = sys.modules.get("transferkit.runtime.guards")  # not imported: no run started, no RunStopped (and
        # a config error is told without importing Lightning)
        if guards is not None and isinstance(err, guards.RunStopped):  # interrupted (130/143) or diverged (3)
            sys.stderr.write(f"transferkit: {err.status}: {err}\n")
            raise SystemExit(err.exit_code) from None
        if debug:
            raise
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        config_error = isinstance(err, (HydraException, OmegaConfBaseException))
        text = explain_config_error(err) if config_error else f"{type(err).__name__}: {err}"
        sys.stderr.write(f"transferkit: error: {text}\n(add debug=true for the full traceback)\n")
        raise SystemExit(2 if config_error else 1) from None
    if isinstance(results, dict) and results.get("kind") == "sweep" and results["status"] != "completed":
        from transferkit.search.sweep import failure_line

        sys.stderr.write(f"transferkit: error: {failure_line(results)}\n")
        raise SystemExit(1)
