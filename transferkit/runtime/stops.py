"""`RunStopped`: the base of every error that ends a fit with a `status` and an exit code (a leaf module,
so that both the guards and the checkpoint writer can raise its kinds)."""

from __future__ import annotations


class RunStopped(Exception):
    """A fit that stopped before its end; `status` goes to results.json, `exit_code` to the shell.

    Example:
        >>> import transferkit
        >>> try:
        ...     run = transferkit.fit(optimizer={"lr": 1e6})  # doctest: +SKIP
        ... except transferkit.RunStopped as stop:
        ...     print(stop.status, stop)
    """

    status = "failed"
    exit_code = 1
