"""transferkit from Python: one function per command (`transferkit.fit`, `transferkit.predict`, ...).

Each function writes its arguments as the command line's `key=value` overrides and runs the command
through `transferkit.cli.app`, so a notebook and the shell compose the same config and make the same run:

    >>> import transferkit
    >>> run = transferkit.fit("small_similar", trainer={"max_epochs": 1})       # doctest: +SKIP
    >>> run.results["metrics"]["test/acc"]                                       # doctest: +SKIP

Errors are exceptions with the command line's one-line messages (`ConfigError`, `FileNotFoundError`,
...); a run stopped by Ctrl+C / KeyboardInterrupt or a `SystemExit` inside Lightning raises
`RunInterrupted`. Nothing global changes: logging gets a handler on the "transferkit" logger only
while a command runs (and only when the program configured no logging of its own), warning filters,
environment variables and the SIGINT handler are restored afterwards.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from transferkit.cli import app as cli
from transferkit.commands.table import COMMANDS
from transferkit.errors import ConfigError
from transferkit.cli.overrides import flatten, override_text
from transferkit.runs import Run, load

EXPLAIN_KEYS = """
    Args:
        recipe: a recipe name (`small_similar`, see recipes/) or the path of a recipe .yaml file.
        overrides: command-line overrides, group choices included: ["model=resnet18", "trainer.max_epochs=5"].
        **keys: config values: a dict per group (data={{"root": "/x"}}, trainer={{"max_epochs": 5}}) or a value
            for a top-level key (seed=1, ckpt_path=run.dir); a string for a group chooses its option
            (model="resnet18"). Applied after `overrides`.

    Returns:
        Run: the run directory with its results (`.dir`, `.results`, `.config`, `.task`, `.predict`, `.show`).

    Raises:
        ConfigError: a bad key or value (the message names it); FileNotFoundError and friends as on the command
        line; RunInterrupted or RunDiverged when the run stopped early.

    Example:
        >>> import transferkit
        >>> {example}  # doctest: +SKIP
"""


def overrides_of(recipe: str | os.PathLike | None, overrides: list[str] | None, keys: Mapping) -> list[str]:
    """The command line's overrides for `recipe`, `overrides` and `keys` (dicts flattened to dotted keys).

    Example:
        >>> overrides_of("small_similar", ["model=resnet18"], {"trainer": {"max_epochs": 5}, "seed": 1})
        ['recipe=small_similar', 'model=resnet18', 'trainer.max_epochs=5', 'seed=1']
    """
    if isinstance(overrides, str):
        raise ConfigError(f"overrides={overrides!r} must be a list of key=value strings, e.g. [{overrides!r}].")
    given = [str(o) for o in overrides or []]
    for item in given:
        if item in cli.MULTIRUN_FLAGS:
            raise ConfigError(f"overrides: {item!r} (a sweep) is for the command line; from Python, loop over the "
                              "values and call the function once per value.")
    recipe_part = [f"recipe={override_text(recipe, 'recipe', cli.parse_value)}"] if recipe is not None else []
    return [*recipe_part, *given, *flatten(keys, cli.parse_value)]


def run_command(command: str, recipe=None, overrides: list[str] | None = None, **keys) -> Run:
    """Run one CLI command (`fit`, `show-augs`, ...) from Python and return its `Run`.

    Example:
        >>> run = run_command("summary", model="resnet18")  # doctest: +SKIP
    """
    argv = [command, *overrides_of(recipe, overrides, keys)]
    debug = keys.get("debug") is True or "debug=true" in argv
    with python_session(debug):
        results = stopped_as_exception(command, argv)
    return Run(results["run_dir"], results=results)


def stopped_as_exception(command: str, argv: list[str]) -> dict:
    """`cli.run_for_python(argv)`, where a KeyboardInterrupt or SystemExit (Lightning exits after a Ctrl+C)
    becomes RunInterrupted naming the run directory."""
    from transferkit.training.rundir import ENV_RUN_DIR  # lazy: `import transferkit` stays free of torch

    try:
        return cli.run_for_python(argv)
    except (KeyboardInterrupt, SystemExit) as err:
        from transferkit.runtime.guards import EXIT_SIGNAL, RunInterrupted  # lazy: as above

        where = os.environ.get(ENV_RUN_DIR)
        what = "KeyboardInterrupt (Ctrl+C or the notebook's stop button)" if isinstance(err, KeyboardInterrupt) \
            else f"SystemExit({err.code!r}) raised inside the run (Lightning exits so after a Ctrl+C or a signal)"
        raise RunInterrupted(f"transferkit.{command.replace('-', '_')} stopped: {what}"
                             f"{f'; its run directory is {where}' if where else ''}.",
                             EXIT_SIGNAL[signal.SIGINT]) from None


@contextmanager
def python_session(debug: bool = False) -> Iterator[None]:
    """What a command may change while it runs, put back afterwards: a log handler on "transferkit"
    (only when neither it nor the root logger has one), environment variables, and SIGINT's handler."""
    logger = logging.getLogger("transferkit")
    handler, level = None, logger.level
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        if level == logging.NOTSET:
            logger.setLevel(logging.DEBUG if debug else logging.INFO)
    saved_env = {name: os.environ.get(name) for name in ENV_KEPT}
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must not phone home
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        yield
    finally:
        if main_thread and sigint is not None:
            signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after a KeyboardInterrupt
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(level)


# Set while a command runs: by transferkit (the run directory, for DDP workers) and by Lightning's seed_everything.
ENV_KEPT = ("NO_ALBUMENTATIONS_UPDATE", "TRANSFERKIT_RUN_DIR", "TRANSFERKIT_CV_DIR", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def command_function(name: str, command: str, summary: str, example: str):
    """The public function of one command (its signature: recipe, overrides, **keys)."""

    def call(recipe: str | os.PathLike | None = None, overrides: list[str] | None = None, **keys) -> Run:
        return run_command(command, recipe, overrides, **keys)

    call.__name__ = call.__qualname__ = name
    call.__module__ = __name__
    call.__doc__ = (f"{summary}\n\n    The Python form of `python -m transferkit {command} ...`: same config, same "
                    f"run directory.\n" + EXPLAIN_KEYS.format(example=example))
    return call


for _command in COMMANDS.values():
    globals()[_command.api_name] = command_function(_command.api_name, _command.name, _command.summary,
                                                    _command.example)
del _command

__all__ = ["Run", "load", "run_command", "overrides_of", *(c.api_name for c in COMMANDS.values())]
