"""Jupyter integration: a notebook cell that calls `run.attention(...)` executes in a real kernel and its HTML
output holds every weight and every row's entropy; the chapter's notebooks execute end to end (slow tier)."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from nmt.fileio import atomic_write_text

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' for nbformat and nbclient")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' for nbformat and nbclient")

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXECUTED = ROOT / "build" / "notebooks"


def execute(cells: list[str], cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def test_a_notebook_cell_shows_the_attention_inline_with_every_number(trained_transformer, tmp_path):
    notebook = execute([
        f"import nmt\nrun = nmt.load({str(trained_transformer)!r})\nview = run.attention('ab ca de fo')\nview",
        "import json\nprint(json.dumps({'weights': view.weights.tolist(), 'entropy': view.entropy.tolist()}))",
        "fig = view.plot()\nprint(len(fig.axes))\nfig",
    ], tmp_path)
    shown, numbers, axes = (cell.outputs for cell in notebook.cells)
    page = next(o for o in shown if o.output_type == "execute_result").data["text/html"]
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', page).group(1))
    data = json.loads(re.search(r'id="nmt-data">(.*?)</script>', srcdoc, re.S).group(1))
    expected = json.loads(numbers[0].text)
    layers = data["attention"]["cross"]  # per layer: the heads averaged, then each head, as /attention answers
    assert np.array_equal([[m["weights"] for m in layer[1:]] for layer in layers], expected["weights"])
    assert np.allclose([[m["entropy"] for m in layer[1:]] for layer in layers], expected["entropy"])
    shape = np.array(expected["weights"]).shape
    assert int(axes[0].text) == shape[0] * shape[1]  # one axes per head of every layer
    assert [o.output_type for o in axes[1:]] == ["execute_result"] and "image/png" in axes[1].data  # shown once


@pytest.mark.slow
@pytest.mark.skipif(not Path(os.environ.get("NMT_DATA_MIRROR") or "/nonexistent").is_dir()
                    and not os.environ.get("NMT_NOTEBOOKS_ONLINE"),
                    reason="the notebooks train on the real corpora: point NMT_DATA_MIRROR at a local mirror (make "
                           "does when ../shared/data exists), or download them: NMT_NOTEBOOKS_ONLINE=1 (make "
                           "notebooks sets it)")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_runs_end_to_end(path):
    """Each notebook executes in a real kernel; the executed copy, with its outputs, is kept in build/notebooks/
    for `make docs` to render."""
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells), f"{path.name} is stored with outputs"
    nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    EXECUTED.mkdir(parents=True, exist_ok=True)
    atomic_write_text(EXECUTED / path.name, nbformat.writes(notebook))
