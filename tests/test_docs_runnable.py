"""Docs that cannot rot: every command block marked runnable in docs/ runs, offline, and exits with 0.

The marker (docs/reference/docs-markers.md) is an HTML comment on the line before a ```bash fence:
`<!-- runnable -->`, `<!-- runnable slow -->` (a @pytest.mark.slow run), and optional overrides after a colon,
`<!-- runnable slow: data.num_folds=2 -->`, appended to each command so it runs in seconds. Every line of
the block must be a `python -m transferkit ...` command; each runs in an empty temporary folder.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SKIPPED = {"_build", "_generated", "_executed", "wip"}
MARKER = re.compile(r"^<!-- runnable(?P<slow> slow)?(?::(?P<overrides>[^>]*))? -->\n```bash\n(?P<body>.*?)^```",
                    re.M | re.S)
EXAMPLE = re.compile(r"^````.*?^````", re.M | re.S)
MAX_COMMANDS = 8


def runnable_blocks(docs: Path = DOCS) -> list[tuple[str, bool, list[list[str]]]]:
    """(page:line, slow, [argv after `python -m transferkit`, overrides appended]) for each marked block."""
    blocks = []
    for page in sorted(docs.rglob("*.md")):
        if SKIPPED & set(page.relative_to(docs).parts):
            continue
        # a ````-fenced example of the marker (docs/reference/docs-markers.md) is shown, not run
        text = EXAMPLE.sub(lambda m: "\n" * m.group().count("\n"), page.read_text(encoding="utf-8"))
        for found in MARKER.finditer(text):
            where = f"{page.relative_to(REPO)}:{text[:found.start()].count(chr(10)) + 1}"
            overrides = shlex.split(found.group("overrides") or "")
            commands = []
            for line in found.group("body").splitlines():
                words = shlex.split(line, comments=True)
                assert words[:3] == ["python", "-m", "transferkit"], (
                    f"{where}: a runnable block holds only `python -m transferkit ...` lines, not {line!r}")
                commands.append([*words[3:], *overrides])
            blocks.append((where, bool(found.group("slow")), commands))
    return blocks


BLOCKS = runnable_blocks()


def test_runnable_set_is_small_and_found() -> None:
    count = sum(len(commands) for _, _, commands in BLOCKS)
    assert 3 <= count <= MAX_COMMANDS, f"{count} runnable commands in docs/ (keep 3..{MAX_COMMANDS})"
    assert any(not slow for _, slow, _ in BLOCKS), "some runnable blocks run in the default (fast) selection"


@pytest.mark.parametrize("where,commands", [
    pytest.param(where, commands, id=where, marks=[pytest.mark.slow] if slow else [])
    for where, slow, commands in BLOCKS])
def test_runnable_block_runs(where: str, commands: list[list[str]], tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for argv in commands:
        done = subprocess.run([sys.executable, "-m", "transferkit", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"{where}: `python -m transferkit {' '.join(argv)}` exited "
                                      f"{done.returncode}:\n{done.stderr[-3000:]}")
