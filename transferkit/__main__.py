"""`python -m transferkit <command> key=value ...`."""

import gc

from transferkit.cli.app import main

if __name__ == "__main__":
    try:
        main()
    finally:
        # The process ends here. Without this, shutdown walks the cyclic collector over the million-odd
        # objects torch, timm and Lightning create at import: about 1.7 s on 2 cores
        # (benchmarks/cpu_fit.py). Every output is written and closed by now (files, loggers,
        # checkpoint threads, data workers); frozen objects are simply not collected before exit.
        gc.freeze()
