"""Where written files go: this repository's ``figures/`` and ``results/``, or a scratch folder.

Notebooks save figures (and the JSON they make) under ``figures_dir()`` and ``results_dir()``.
``make workbook`` leaves ``CSM_OUTPUT_DIR`` unset, so they refresh the committed files; the tests
set it (the repository's ``conftest.py``), so running them leaves the clone exactly as committed.
Committed results are always *read* from ``RESULTS``, whatever the variable says.

Every chapter writes its figures and results through it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"  # committed results: read from here
FIGURES = REPO / "figures"


def output_dir(kind: str) -> Path:
    """``$CSM_OUTPUT_DIR/kind`` when the variable is set, else the repository's ``kind`` folder (created)."""
    root = os.environ.get("CSM_OUTPUT_DIR")
    folder = Path(root) / kind if root else REPO / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def figures_dir() -> Path:
    return output_dir("figures")


def results_dir() -> Path:
    return output_dir("results")
