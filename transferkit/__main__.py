"""`python -m transferkit <command> key=value ...`."""

from transferkit.cli import main

if __name__ == "__main__":
    main()
