"""Where the checkout's own files are: the papers' tables (results/paper), the matrix (matrix.yaml) and the git
tree whose state every results file records. They belong to the checkout the suite is run from, not to the
installed packages; this is the one place that finds them (MODBENCH_ROOT overrides, e.g. for an installed copy
run against another checkout)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("MODBENCH_ROOT") or Path(__file__).resolve().parent.parent)
PAPER_DIR = PROJECT_ROOT / "results" / "paper"
MATRIX_FILE = PROJECT_ROOT / "matrix.yaml"
