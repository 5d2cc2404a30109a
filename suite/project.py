"""Where the suite's own files come from.

- The papers' tables (results/paper/*.csv) are installed with the code as the data package `modbench.paper`
  (pyproject.toml maps it), so a table, a claim or a check reads them wherever the suite is installed.
- The matrix (matrix.yaml) is read from the directory a command runs in, where the commands' outputs
  (results/...) are written too; `modbench matrix --matrix FILE` names another.
- The git state every results file records is that of the code that ran: the repository holding this package
  (none for an installed wheel)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import IO

MATRIX_FILE = Path("matrix.yaml")


def paper_table(name: str) -> IO[str]:
    """One of the papers' tables (e.g. "pmod_table1_general.csv"), opened for reading."""
    return resources.files("modbench.paper").joinpath(name).open(encoding="utf-8")


def code_dir() -> Path:
    """This package's folder: git finds the repository of the code that ran from it."""
    return Path(__file__).resolve().parent
