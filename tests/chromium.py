"""Open an HTML page in headless Chromium and return what its console said (tests of report.html, audit.html).

The page is copied beside itself with one script added, which reports every image that did not load;
the page's own content is left as it is. Any console message but the script's final count is a problem
(an uncaught error, a blocked or missing resource, a broken image). `.ci/run` installs Debian's `chromium`;
where it is absent the tests skip, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

MARKER = "transferkit-check:"
CHECK = ('<script>window.addEventListener("load",()=>{for(const i of document.images){if(!i.complete||'
         'i.naturalWidth===0)console.error("image not shown: "+i.src.slice(0,120));}'
         f'console.log("{MARKER} "+document.images.length+" images");}});</script>')
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] \"(.*)\", source: (.*)$")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("headless Chromium is not installed here (`.ci/run` installs Debian's chromium package)")
    return found


def console_messages(page: Path, timeout: int = 120) -> tuple[list[str], int]:
    """The console messages of `page` loaded in headless Chromium (besides the check's own), and the
    number of images the page holds."""
    browser = chromium()
    copy = page.with_name(f".chromium-check-{page.name}")
    html = page.read_text(encoding="utf-8")
    copy.write_text(html.replace("</body>", CHECK + "</body>") if "</body>" in html else html + CHECK,
                    encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                                   "--v=0", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                                   "--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=timeout)
    finally:
        copy.unlink(missing_ok=True)
    messages = [m.group(1) for line in done.stderr.splitlines() if (m := CONSOLE.search(line))]
    counts = [m for m in messages if m.startswith(MARKER)]
    assert counts, f"the page did not finish loading in Chromium (exit {done.returncode}):\n{done.stderr[-2000:]}"
    return [m for m in messages if not m.startswith(MARKER)], int(counts[-1].split()[1])
