"""Sphinx configuration of transferkit's documentation site (MyST Markdown, MyST-NB, furo).

Build: `pip install ".[docs]" && sphinx-build -W --keep-going -b html docs docs/_build/html`.
Pages made from the code and the benchmark results (the CLI and config reference, the benchmark tables,
the quick-start notebook's rendered copy) are written into docs/_generated/ by `_ext/transferkit_docs.py`
when the build starts; nothing there is edited by hand.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # autodoc documents this checkout's transferkit

project = "transferkit"
author = "the transferkit authors"
copyright = "the transferkit authors, Apache-2.0"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon",
              "transferkit_docs"]
if importlib.util.find_spec("sphinx_copybutton"):  # optional: a copy button on code blocks
    extensions.append("sphinx_copybutton")

exclude_patterns = ["_build", "wip", "Thumbs.db", ".DS_Store", "quickstart.ipynb", "_executed",
                    "**/.ipynb_checkpoints"]
html_theme = "furo"
html_title = "transferkit"
html_static_path: list[str] = []

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3           # `[text](page.md#a-heading)` links resolve to headings down to ###
nb_execution_mode = "off"          # the notebook is rendered from stored outputs (the test suite runs it)
nb_merge_streams = True

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
suppress_warnings = ["myst.header"]  # included results/*.md tables open with ### under a page title
