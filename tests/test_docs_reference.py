"""The reference pages are generated from the code: every config key of conf/ has one meaning in
transferkit/planning/keys.py, every meaning names a key conf/ has, and every command of the command table
has its section in the commands page (docs/_ext/transferkit_docs.py writes both pages at build time)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import transferkit_docs  # noqa: E402 - docs/_ext is not a package

from transferkit.commands.table import COMMANDS  # noqa: E402
from transferkit.planning.keys import GROUPS, KEYS  # noqa: E402


def test_every_config_key_has_a_meaning() -> None:
    missing = sorted(transferkit_docs.config_keys() - transferkit_docs.documented_keys())
    assert not missing, f"keys of conf/ without a meaning in transferkit/planning/keys.py KEYS: {missing}"


def test_every_documented_key_is_in_conf() -> None:
    stale = sorted(transferkit_docs.documented_keys() - transferkit_docs.config_keys())
    assert not stale, f"transferkit/planning/keys.py KEYS names keys that conf/ does not have: {stale}"


def test_every_group_is_described() -> None:
    assert set(GROUPS) == set(transferkit_docs.groups())
    assert all(text.strip() for text in [*GROUPS.values(), *KEYS.values()])


def test_config_page_shows_default_type_and_meaning() -> None:
    page = transferkit_docs.config_page()
    assert "| `data.batch_size` | `64` (segmentation: `16`) | int | Images per training and evaluation batch (per device). |" in page
    # a key whose default differs by option lists the other options' values
    assert "| `optimizer.lr` | `0.001` (sgd: `0.01`) | number or `find` |" in page
    assert "| `scheduler.gamma` | — (exponential: `0.95`, multistep: `0.1`," in page  # not in the default option
    for group in transferkit_docs.groups():
        assert f"\n## {group}\n" in page


def test_commands_page_has_every_command() -> None:
    page = transferkit_docs.cli_page()
    for command in COMMANDS.values():
        assert f"\n## {command.name}\n" in page and command.example in page
    serve = page[page.index("\n## serve\n"):]
    assert "`serve.port`" in serve.split("\n## ")[1]  # a command lists its own keys


def test_every_benchmark_table_gets_a_page_with_its_record(tmp_path: Path) -> None:
    transferkit_docs.write_benchmarks(tmp_path)
    tables = sorted(transferkit_docs.RESULTS.glob("*.md"))
    assert tables
    for table in tables:
        page = (tmp_path / table.name).read_text(encoding="utf-8")
        assert f"```{{include}} ../../../benchmarks/results/{table.name}" in page  # numbers read, not typed
        if table.with_suffix(".json").is_file():
            assert f"`benchmarks/results/{table.stem}.json`" in page and "**date**" in page
        assert table.stem in (tmp_path / "index.md").read_text(encoding="utf-8")


def test_bench_role_reads_the_results_json() -> None:
    import json

    record = json.loads((transferkit_docs.RESULTS / "main_job.json").read_text(encoding="utf-8"))
    assert transferkit_docs.bench_value("main_job.json:test_acc.current.0:.4f") == f"{record['test_acc']['current'][0]:.4f}"
    assert transferkit_docs.bench_value("main_job.json:date") == record["date"]
    with pytest.raises(KeyError):
        transferkit_docs.bench_value("main_job.json:no_such_field")
