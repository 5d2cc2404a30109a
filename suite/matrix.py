"""The benchmark matrix (matrix.yaml): typed slices and launcher, expansion into runs, resumable execution."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from modbench.models.config import from_dict
from modbench.suite.launcher import LauncherConfig
from modbench.suite.project import MATRIX_FILE
from modbench.suite.runner import RunSpec


@dataclass
class MatrixSlice:
    variants: list[str]
    tasks: list[str]
    protocol: list[str] = field(default_factory=lambda: ["llava"])
    dtype: list[str] = field(default_factory=lambda: ["float32"])
    batch_size: list[int] = field(default_factory=lambda: [1])
    limit: int | None = None
    description: str = ""


@dataclass
class MatrixFile:
    slices: dict[str, MatrixSlice]
    launcher: LauncherConfig  # how the cells run (defaults: one after another in this process)


def load_matrix_file(path: str | Path = MATRIX_FILE) -> MatrixFile:
    data = yaml.safe_load(Path(path).read_text())
    if "slices" not in data or not set(data) <= {"slices", "launcher"}:
        raise ValueError(f"{path}: top level must be 'slices' and optionally 'launcher', got {sorted(data)}")
    slices = {name: from_dict(MatrixSlice, body, f"slices.{name}") for name, body in data["slices"].items()}
    for name, slice_ in slices.items():
        check_slice(slice_, f"{path}: slices.{name}")
    launcher = from_dict(LauncherConfig, data.get("launcher") or {}, "launcher").validate()
    return MatrixFile(slices, launcher)


def check_slice(slice_: MatrixSlice, where: str) -> None:
    """Every variant and task of a slice is registered (a typo fails when the file loads, not cells later)."""
    from modbench.models.config import DTYPES, ConfigError
    from modbench.models.resolver import model_name_error
    from modbench.tasks.registry import close_task_names, local_tasks

    problems = [problem for model in slice_.variants if (problem := model_name_error(model))]
    known_tasks = sorted(local_tasks())
    for task in slice_.tasks:
        if task not in known_tasks:
            close = close_task_names(task, known_tasks)
            problems.append(f"task {task!r} is not a local task" + (f"; did you mean {', '.join(close)}?" if close
                                                                    else f"; local tasks: {known_tasks}"))
    problems += [f"dtype {d!r} is not one of {DTYPES}" for d in slice_.dtype if d not in DTYPES]
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))


def load_matrix(path: str | Path = MATRIX_FILE) -> dict[str, MatrixSlice]:
    return load_matrix_file(path).slices


def run_id(model: str, tasks: list[str], protocol: str, dtype: str, batch: int, limit: int | None) -> str:
    """Deterministic: the same cell of the matrix always maps to the same folder (so a matrix resumes)."""
    digest = hashlib.sha1(json.dumps(sorted(tasks)).encode()).hexdigest()[:8]
    return f"{model}__{protocol}__{dtype}__b{batch}__l{limit or 'all'}__t{digest}"


def expand(slice_: MatrixSlice, output: str, data_root: str = "") -> list[RunSpec]:
    """One run per (variant, protocol, dtype, batch size); each run covers all the slice's tasks."""
    specs = []
    for model, protocol, dtype, batch in itertools.product(slice_.variants, slice_.protocol, slice_.dtype,
                                                             slice_.batch_size):
        specs.append(RunSpec(model=model, tasks=list(slice_.tasks), limit=slice_.limit, protocol=protocol,
                             dtype=dtype, batch_size=batch, output=output, data_root=data_root,
                             run_id=run_id(model, slice_.tasks, protocol, dtype, batch, slice_.limit)))
    return specs


def finished(spec: RunSpec) -> bool:
    path = Path(spec.output) / spec.run_id / "run.json"
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except json.JSONDecodeError:
        return False
