"""The README stays short and its links resolve; the documentation site builds with warnings as errors and
opens in headless Chromium over a local http server, with working navigation and search."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from chromium import chromium

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_short_and_its_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150, "README.md is at most 150 lines: move details to a page under docs/"
    targets = [t for t in LINK.findall(text) if "://" not in t]
    assert len(targets) >= 20
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    for command in ('pip install . && python -m transferkit fit recipe=small_similar',
                    'pip install ".[test]" && python -m pytest -q'):
        assert command in text  # the two commands (.ci/run runs the second)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dump_dom(url: str) -> str:
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_site_builds_and_opens_with_navigation_and_search(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    html = tmp_path / "html"
    build = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                            str(REPO / "docs"), str(html)], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-4000:]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(html)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/"
        for _ in range(50):
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        index = dump_dom(base + "index.html")
        nav = index[index.index('class="sidebar-tree"'):]
        pages = sorted(set(re.findall(r'<a class="reference internal" href="([^"#]+\.html)', nav)))
        assert len(pages) >= 30, pages
        for section in ("Get started", "How-to guides", "Concepts", "Benchmarks", "Reference"):
            assert section in index
        for page in ("guides/own-images.html", "_generated/config.html", "_generated/cli.html",
                     "reference/api.html", "_generated/quickstart.html", "architecture.html"):
            assert page in pages
        for page in pages:  # every page the navigation names is served
            assert urllib.request.urlopen(base + page, timeout=10).status == 200
        api = urllib.request.urlopen(base + "reference/api.html", timeout=10).read().decode()
        assert "transferkit.api.fit" in api  # autodoc documents the functions api.py makes at import
        found = dump_dom(base + "search.html?q=checkpoint")
        count = re.search(r"found (\d+) page", found)
        assert count and int(count.group(1)) >= 3, found[-3000:]
        assert 'href="guides/faults-resume.html' in found
    finally:
        server.terminate()
        server.wait(timeout=30)
