"""Open a run's report.html in headless Chromium, check it, and take a screenshot.

    python docs/check_report.py outputs/<date>/<time> [--screenshot docs/img/report.png]

Checks, failing with exit 1:
* the page is self-contained: no <script>, no stylesheet <link>, no absolute or remote src/href;
* every relative link and image points at a file of the run directory;
* in the browser, every <img> loaded (`complete` and `naturalWidth > 0`, read back from the DOM of a
  copy of the page with a small script added, in a temporary folder: the run directory is not
  written to).

Needs Chromium (Debian: `apt-get install chromium`). Not part of the unit tests.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

MAX_SCREENSHOT_BYTES = 250_000
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  const ok = (i) => i.complete && i.naturalWidth > 0;
  document.body.setAttribute("data-check", JSON.stringify({total: images.length,
    loaded: images.filter(ok).length, broken: images.filter((i) => !ok(i)).map((i) => i.getAttribute("src")),
    sizes: images.map((i) => [i.getAttribute("src"), i.naturalWidth, i.naturalHeight])}));
});</script>"""


class Refs(HTMLParser):
    """Every src/href of a page, and the tags that would load code or styles from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.forbidden: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" or (tag == "link" and "stylesheet" in (values.get("rel") or "")):
            self.forbidden.append(f"<{tag}>")
        for key in ("src", "href"):
            if values.get(key):
                self.refs.append((tag, values[key]))


def static_problems(run_dir: Path, page: str) -> list[str]:
    refs = Refs()
    refs.feed(page)
    problems = [f"{tag} on the page" for tag in refs.forbidden]
    for tag, ref in refs.refs:
        if re.match(r"^[a-z][a-z0-9+.-]*:|^//|^/", ref, re.IGNORECASE):
            problems.append(f"<{tag}> {ref!r} is not a relative link")
        elif not (run_dir / ref).is_file():
            problems.append(f"<{tag}> {ref!r} points at no file")
    return problems


def find_browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    sys.exit(f"check_report: no Chromium found ({', '.join(BROWSERS)}); apt-get install chromium")


def browser(binary: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-extensions", "--virtual-time-budget=10000"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def images_in_browser(binary: str, run_dir: Path) -> dict:
    """Load a probed copy of the page (with the files it links) and read what the DOM reports."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "*.ckpt"))
        page = copy / "report.html"
        page.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
        dom = browser(binary, "--dump-dom", page.as_uri()).stdout
    found = re.search(r'data-check="([^"]*)"', dom)
    if not found:
        return {"error": "the page did not report its images (did it load?)"}
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(binary: str, run_dir: Path, out: Path, width: int, height: int, scale: float) -> dict:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        browser(binary, f"--screenshot={raw}", f"--window-size={width},{height}", (run_dir / "report.html").as_uri())
        image = Image.open(raw).convert("RGB")
        size = (round(image.width * scale), round(image.height * scale))
        small = image.resize(size, Image.LANCZOS)
        out.parent.mkdir(parents=True, exist_ok=True)
        small.save(out, optimize=True)
        if out.stat().st_size > MAX_SCREENSHOT_BYTES:  # a palette keeps the README light
            small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return {"screenshot": str(out), "pixels": list(size), "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--screenshot", type=Path, help="write a PNG of the page's top here")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--scale", type=float, default=0.6, help="resize factor of the saved screenshot")
    args = parser.parse_args(argv)
    page_path = args.run_dir / "report.html"
    if not page_path.is_file():
        sys.exit(f"check_report: {page_path} does not exist; run fit/test, or python -m transferkit report run=...")
    binary = find_browser()
    problems = static_problems(args.run_dir, page_path.read_text())
    loaded = images_in_browser(binary, args.run_dir)
    if "error" in loaded:
        problems.append(loaded["error"])
    elif loaded["broken"] or not loaded["total"]:
        problems.append(f"images not loaded in the browser: {loaded['broken'] or 'none on the page'}")
    record = {"page": str(page_path), "browser": browser(binary, "--version").stdout.strip() or binary,
              "images": loaded, "problems": problems}
    if args.screenshot:
        record.update(screenshot(binary, args.run_dir, args.screenshot, args.width, args.height, args.scale))
    print(json.dumps(record, indent=2))  # noqa: T201 - a script's output
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
