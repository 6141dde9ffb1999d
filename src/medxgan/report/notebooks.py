"""Results notebooks: jupytext percent-format `.py` files, executed and rendered to HTML."""

from __future__ import annotations

import os
from pathlib import Path

import jupytext
import nbconvert
from nbclient import NotebookClient

from medxgan.files import atomic_path
from medxgan.report.tables import SUMMARY_VARIABLE

CELL_TIMEOUT_S = 600


def render_notebook(source: Path, out: Path, workdir: Path, summary: Path | None = None) -> None:
    """Execute `source` with `workdir` as its working directory and write the result as HTML.

    `summary`: the run's summary table the notebook reads (`reporting.summary_table`), passed to the
    kernel as MEDXGAN_SUMMARY; without one the notebook reads results/summary.csv. A cell that
    raises stops the run with that cell's error; no HTML is written then.
    """
    notebook = jupytext.read(source)
    if summary is not None:
        os.environ[SUMMARY_VARIABLE] = str(Path(summary).resolve())  # the kernel inherits the environment
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    html, _ = nbconvert.HTMLExporter().from_notebook_node(notebook)
    with atomic_path(out) as tmp:
        tmp.write_text(html)
