"""docs/quickstart.ipynb runs top to bottom in a real Jupyter kernel, with one live progress bar per fit."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"
EXECUTED = NOTEBOOK.parent / "_executed" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # A kernel on this interpreter, whatever other "python3" kernels the machine has registered.
    spec = tmp_path / "jupyter" / "kernels" / "transferkit-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "transferkit test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH", "")]))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="transferkit-test",
                                     resources={"metadata": {"path": str(tmp_path)}})
    # The kernel imports this checkout's transferkit (not another install) and stays on one thread per op.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    client.execute(env=env)  # raises CellExecutionError, with the cell, on any error
    # The documentation site renders this executed copy (docs/_ext/transferkit_docs.py; not committed).
    EXECUTED.parent.mkdir(exist_ok=True)
    nbformat.write(notebook, EXECUTED)
    fits = [cell for cell in notebook.cells if cell.cell_type == "code" and "transferkit.fit(" in cell.source]
    assert len(fits) == 2
    for cell in fits:
        widgets = [o for o in cell.outputs if WIDGET in o.get("data", {})]
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert widgets, "a fit in a notebook shows Lightning's progress bar as a live widget"
        assert "it/s]" not in text and "Epoch 0:" not in text, "no wall of text progress frames"
        assert "Run directory:" in text  # transferkit's log lines reach the notebook
    assert any("test/acc" in str(o) for cell in notebook.cells for o in cell.get("outputs", []))
    assert len(list(tmp_path.glob("outputs/*/*/results.json"))) == 2
    assert (tmp_path / "quickstart_images" / "red").is_dir()
