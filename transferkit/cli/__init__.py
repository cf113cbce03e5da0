"""argv -> composed config -> a command; the only Hydra user (see `transferkit.cli.app`)."""

from transferkit.cli.app import main

__all__ = ["main"]
