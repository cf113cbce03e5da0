"""Sweeps (`<command> -m key=a,b ...`): Hydra's parser expands the grid, `transferkit.search.sweep` runs each
job through the CLI's `run` (why not Hydra's own runner: see transferkit/search/sweep.py)."""

from __future__ import annotations

from collections.abc import Callable

from transferkit.cli.compose import UsageError, compose_config, register_recipes
from transferkit.commands.table import COMMANDS
from transferkit.config.files import package_dir
from transferkit.errors import ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")
SWEEPABLE = tuple(name for name, command in COMMANDS.items() if command.sweeps)




def run_sweep(command: str, overrides: list[str], run_job: Callable[[list[str]], dict]) -> dict:
    """Expand the grid and compose every job's config (a bad value fails before anything trains), then run it."""
    # lazy: the sweep machinery imports the training stack; a single run and config errors stay light
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

    from transferkit.search.launchers import Job  # lazy: see run_sweep

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
