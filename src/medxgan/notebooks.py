"""Results notebooks: jupytext percent-format `.py` files, executed and rendered to HTML."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbconvert
from nbclient import NotebookClient

from medxgan.utils import atomic_path

CELL_TIMEOUT_S = 600


def render_notebook(source: Path, out: Path, workdir: Path) -> None:
    """Execute `source` with `workdir` as its working directory and write the result as HTML.

    A cell that raises stops the run with that cell's error; no HTML is written then.
    """
    notebook = jupytext.read(source)
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    html, _ = nbconvert.HTMLExporter().from_notebook_node(notebook)
    with atomic_path(out) as tmp:
        tmp.write_text(html)
