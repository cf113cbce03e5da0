"""The project files an open-source package ships: LICENSE (the text pyproject declares), CHANGELOG.md and
CONTRIBUTING.md. Reads files only; tests/test_packaging.py builds the wheel and checks it carries LICENSE."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# md5 of the Apache License 2.0 as published at https://www.apache.org/licenses/LICENSE-2.0.txt (202 lines,
# the APPENDIX's boilerplate keeps its "[yyyy] [name of copyright owner]" brackets)
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_license_is_the_apache_2_text():
    text = (REPO / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == APACHE_2_MD5, "LICENSE is not the unmodified Apache License 2.0 text"


def test_pyproject_declares_the_license_and_ships_the_file():
    toml = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = toml["project"]
    assert project["license"] == "Apache-2.0"  # PEP 639 SPDX expression; the {text = ...} table is deprecated
    assert "LICENSE" in project["license-files"]
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]  # PEP 639: not both
    setuptools = [r for r in toml["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools and int(re.search(r">=\s*(\d+)", setuptools[0]).group(1)) >= 77  # first with PEP 639


def test_changelog_lists_waves_newest_first():
    text = (REPO / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings and headings[0].startswith("Unreleased"), headings
    waves = [int(m.group(1)) for h in headings if (m := re.search(r"[Ww]ave (\d+)", h))]
    assert waves == sorted(waves, reverse=True) and waves[-1] == 1, headings
    assert len(text.splitlines()) <= 200


def test_contributing_names_the_ci_test_commands():
    """CONTRIBUTING.md tells the commands .ci/run runs, so a contributor runs what CI runs."""
    contributing = (REPO / "CONTRIBUTING.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"python -m pytest[^\n&|;]*", ci)
    assert commands, "no pytest command found in .ci/run"
    for command in commands:
        assert command.strip() in contributing, f"CONTRIBUTING.md does not name .ci/run's {command.strip()!r}"
    assert "bash .ci/run" in contributing and 'pip install -e ".[test]"' in contributing
    assert len(contributing.splitlines()) <= 150
