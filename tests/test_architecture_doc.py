"""docs/architecture.md matches the tree: it names every package of transferkit/, and every package it
names exists.

A package is a folder with an `__init__.py` (nested ones too: `training/race/`). The doc names one in
backticks, as `` `training/race/` `` or `` `transferkit/training/race` ``. Any backticked path that ends
with `/` or starts with `transferkit/` is read as a package path, so a package that moves or goes leaves
a stale name the test reports, unless it is a folder of the repository (`conf/`, `tests/`) or one of
`OTHER_FOLDERS`.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
# Folders the doc may name that are neither packages nor folders of the repository: what a run writes.
OTHER_FOLDERS = frozenset({"outputs", "checkpoints", "trials", "race", "feature_cache", "tensorboard"})
PATH = re.compile(r"`((?:transferkit/)?[a-z_][a-z0-9_]*(?:/[a-z_][a-z0-9_]*)*/?)`")


def packages(package_dir: Path) -> set[str]:
    """`training/race` for transferkit/training/race/__init__.py; the package root itself is left out."""
    return {p.parent.relative_to(package_dir).as_posix() for p in package_dir.rglob("__init__.py")} - {"."}


def named_paths(doc: str) -> set[str]:
    """The package paths the doc names: backticked, ending with `/` or starting with `transferkit/`."""
    found = set()
    for token in PATH.findall(doc):
        if token.startswith("transferkit/") or token.endswith("/"):
            found.add(token.removeprefix("transferkit/").rstrip("/"))
    return found - {"", "transferkit"}


def doc_problems(doc: str, package_dir: Path, repo: Path) -> list[str]:
    tree, named = packages(package_dir), named_paths(doc)
    missing = [f"docs/architecture.md does not name package transferkit/{p}/ (write `{p}/` in its section)"
               for p in sorted(tree - named)]
    stale = [f"docs/architecture.md names `{p}/`, which is no package of transferkit/ (nor a folder of the repo)"
             for p in sorted(named - tree)
             if not (repo / p).is_dir() and p.split("/")[-1] not in OTHER_FOLDERS]
    return missing + stale


def test_architecture_doc_names_every_package_and_only_real_ones() -> None:
    problems = doc_problems(DOC.read_text(encoding="utf-8"), REPO / "transferkit", REPO)
    assert not problems, "\n".join(problems)


def test_checker_reports_missing_and_stale_packages(tmp_path: Path) -> None:
    for folder in ("transferkit/cli", "transferkit/training", "transferkit/training/race", "transferkit/data", "conf"):
        (tmp_path / folder).mkdir(parents=True)
        if folder.startswith("transferkit"):
            (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "transferkit" / "__init__.py").write_text("")
    doc = ("**`cli/`** argv -> config. **`transferkit/data`**: the pipeline, reads `conf/`, writes `checkpoints/`.\n"
           "`reports/` holds the figures; `transferkit/data/decode.py` is a file; `x / y` is no path.\n")
    assert doc_problems(doc, tmp_path / "transferkit", tmp_path) == [
        "docs/architecture.md does not name package transferkit/training/ (write `training/` in its section)",
        "docs/architecture.md does not name package transferkit/training/race/ (write `training/race/` in its "
        "section)",
        "docs/architecture.md names `reports/`, which is no package of transferkit/ (nor a folder of the repo)",
    ]
