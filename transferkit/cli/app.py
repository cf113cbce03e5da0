"""`python -m transferkit <command> key=value ...`: compose the Hydra config and run a command.

This is the only module that uses Hydra. Recipes in `recipes/` are registered as the
`recipe` group, so `recipe=small_similar` selects `recipes/small_similar.yaml`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from omegaconf import open_dict

from transferkit.cli.compose import UsageError, compose_config, parse_value  # noqa: F401 - cli.* in tests
from transferkit.cli.sweeps import MULTIRUN_FLAGS, expand_sweep, run_sweep  # noqa: F401 - cli.* in tests
from transferkit.commands.table import COMMANDS
from transferkit.config.explain import explain_config_error, hydra_outside_sweep
from transferkit.config.files import recipe_names  # noqa: F401 - cli.recipe_names in tests
from transferkit.errors import ConfigError, did_you_mean

log = logging.getLogger("transferkit")

USAGE = (
    "usage: python -m transferkit <command> [-m] [key=value ...]   (-m: sweep, e.g. optimizer.lr=0.01,0.001)\n"
    f"commands: {', '.join(COMMANDS)}\n"
    "examples:\n"
    "  python -m transferkit fit recipe=small_similar\n"
    "  python -m transferkit fit recipe=small_similar data.root=/path/to/images trainer.max_epochs=5\n"
    "  python -m transferkit predict ckpt_path=outputs/.../checkpoints/best.ckpt input=/path/to/images\n"
    "  python -m transferkit cv recipe=small_similar data.num_folds=5\n"
    "Every command and config key: docs/ (Reference), built with sphinx-build; meanings in transferkit/planning/keys.py."
)


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
        return run_sweep(command, overrides, run_job)
    if stray := hydra_outside_sweep(overrides):
        raise UsageError(stray)
    spec, cfg = COMMANDS[command], compose_config(overrides)
    if spec.checkpoint_run and cfg.ckpt_path:
        from transferkit.planning.rebuild import config_of_checkpoint_run  # lazy: reads checkpoints (torch)

        cfg = config_of_checkpoint_run(cfg, overrides)
    if spec.composes:  # each trial composes this command line with its sampled values
        with open_dict(cfg):
            cfg.tune.overrides = list(overrides)
    if cfg.get("resume") and not spec.composes:  # tune resume=<dir> continues its own study
        if not spec.resumes:
            raise UsageError(f"resume={cfg.resume} continues a fit run (python -m transferkit fit resume=...) "
                             "or a cv run (python -m transferkit cv resume=...).")
        from transferkit.planning.resume import config_of_resumed_cv, config_of_resumed_run  # lazy: Lightning

        cfg = (config_of_resumed_cv if command == "cv" else config_of_resumed_run)(cfg, overrides)
    module = importlib.import_module(spec.module)  # lazy: only the chosen command's stack is imported
    from transferkit.training.console import quiet_console  # lazy: imports Lightning; config errors stay light

    with quiet_console(bool(cfg.debug)):
        return module.run(cfg, compose_config) if spec.composes else module.run(cfg)


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
        from transferkit.search.sweep import failure_line  # lazy: only after a sweep, which imported it

        sys.stderr.write(f"transferkit: error: {failure_line(results)}\n")
        raise SystemExit(1)
