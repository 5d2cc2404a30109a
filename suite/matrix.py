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
    """A matrix file (default: matrix.yaml in the directory the command runs in, the checkout's root)."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" in {Path.cwd()}"  # a relative default names where it looked
        raise FileNotFoundError(f"no matrix file {str(path)!r}{where}: run from the checkout's root (its "
                                "matrix.yaml) or pass --matrix FILE")
    data = yaml.safe_load(path.read_text())
    if "slices" not in data or not set(data) <= {"slices", "launcher"}:
        raise ValueError(f"{path}: top level must be 'slices' and optionally 'launcher', got {sorted(data)}")
    slices = {name: from_dict(MatrixSlice, body, f"slices.{name}") for name, body in data["slices"].items()}
    for name, slice_ in slices.items():
        check_slice(slice_, f"{path}: slices.{name}")
    launcher = from_dict(LauncherConfig, data.get("launcher") or {}, "launcher").validate()
    return MatrixFile(slices, launcher)


def check_slice(slice_: MatrixSlice, where: str) -> None:
    """Every variant, task, dtype and protocol of a slice is known (a typo fails when the file loads, not cells
    later)."""
    from modbench.models.config import DTYPES, PROTOCOLS, ConfigError
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
    problems += [f"protocol {p!r} is not one of {PROTOCOLS}" for p in slice_.protocol if p not in PROTOCOLS]
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


# -- running a slice (`modbench matrix`) ----------------------------------------------------------------------------

MODES = ("run", "detach", "status", "collect", "dry_run")


@dataclass
class MatrixRequest:
    """One `modbench matrix` invocation: which slice, where its runs and tables go, and how the cells launch."""
    slice: str = "bench"
    matrix_file: str | None = None  # None: ./matrix.yaml (suite/project.py)
    output: str = "results/runs"
    tables: str = "results/tables"
    plots: bool = True
    data_root: str = ""
    rerun: bool = False
    mode: str = "run"  # one of MODES
    launcher: dict = field(default_factory=dict)  # overrides of the file's launcher section (None: keep); "launcher" is its kind


def run_matrix(request: MatrixRequest, log=None) -> int:
    """Runs the missing cells of a slice (here, in processes, or as a SLURM job array), then the tables and plots;
    or, by mode, submits and returns, lists the cells' states, collects a detached submission, or prints what would
    run. Returns the exit code: non-zero when a cell failed. Ctrl-C / SIGTERM propagate (KeyboardInterrupt) after
    the failed cells are listed."""
    import functools
    import sys

    from modbench.suite.launcher import with_overrides

    log = log or functools.partial(print, flush=True)
    if request.mode not in MODES:
        raise ValueError(f"mode {request.mode!r} is not one of {MODES}")
    matrix = load_matrix_file(request.matrix_file) if request.matrix_file else load_matrix_file()
    if request.slice not in matrix.slices:
        raise ValueError(f"--slice: unknown slice {request.slice!r}; matrix.yaml has {sorted(matrix.slices)}")
    chosen = matrix.slices[request.slice]
    overrides = dict(request.launcher)
    overrides["kind"] = overrides.pop("launcher", None)
    cfg = with_overrides(matrix.launcher, overrides)
    if request.mode == "detach" and cfg.kind != "slurm":
        raise ValueError("--detach needs --launcher slurm (local cells run while `modbench matrix` runs)")
    # jobs start elsewhere: they get absolute paths (the run folders must be on storage the nodes share)
    output = str(Path(request.output).resolve()) if cfg.kind == "slurm" else request.output
    specs = expand(chosen, output, data_root=request.data_root)
    folder = cfg.folder(output, request.slice).resolve()
    if request.mode == "status":
        return _status(specs, folder, log)
    if request.mode == "collect":
        return _collect(request, cfg, specs, folder, log)
    todo = [s for s in specs if request.rerun or not finished(s)]
    if request.mode == "dry_run":
        return _dry_run(request.slice, cfg, todo, folder, log)
    _ensure_data(chosen, request.data_root, log)
    log(f"slice {request.slice}: {len(specs)} runs, {len(specs) - len(todo)} already finished")
    failed: list[str] = []
    try:
        if cfg.kind == "slurm" and todo:
            from modbench.suite import slurm
            from modbench.suite.launcher import LaunchState

            previous = LaunchState.load(folder)
            if previous is not None and slurm.still_running(previous):  # two jobs must not write one run folder
                raise ValueError(f"jobs of an earlier submission of slice {request.slice} are still running "
                                 f"({folder}): see --status, wait for them with --collect, or cancel them first")
            state = LaunchState(request.slice, cfg.submitit, str(folder), output)
            executor = slurm.make_executor(cfg, request.slice, folder)
            slurm.submit(executor, todo, cfg.processes_per_cell(), state)
            jobs = sorted({c.job_id.split("_")[0] for c in state.cells.values()})
            log(f"submitted {len(todo)} cell(s) as job(s) {', '.join(jobs)} ({cfg.submitit}); logs in {folder}")
            if request.mode == "detach":
                base = f"modbench matrix --slice {request.slice} --launcher slurm --output {request.output}"
                log(f"detached: `{base} --status` shows them, `{base} --collect` waits and writes the tables")
                return 0
            try:
                failed += slurm.watch(executor, todo, cfg.processes_per_cell(), state, cfg.retries,
                                      cfg.poll_seconds if cfg.submitit == "slurm" else 0.5)
            except KeyboardInterrupt:
                print(f"stopped watching; the jobs keep running: `modbench matrix --slice {request.slice} "
                      "--launcher slurm --collect` waits for them and writes the tables", file=sys.stderr)
                return 130
        elif cfg.jobs == 1 and cfg.processes_per_cell() == 1:
            from modbench.suite.launcher import run_in_process

            run_in_process(todo, cfg.retries, failed)
        else:
            from modbench.suite.launcher import run_in_processes

            run_in_processes(todo, cfg, folder, failed)
        _tables(request, log)
    finally:  # listed even when interrupted, or when the tables or plots raise
        _list_failed(failed, len(todo))
    return 1 if failed else 0


def _ensure_data(chosen: MatrixSlice, root: str, log) -> None:
    """Fixtures are written for a slice of tiny variants without data; real slices need prepared data."""
    from modbench.tasks.registry import check_data

    try:
        check_data(chosen.tasks, root)
    except FileNotFoundError:
        from modbench import models
        from modbench.models.resolver import is_variant

        if not all(models.get_variant(v).tiny for v in chosen.variants if is_variant(v)):
            raise
        from modbench.tasks.fixtures import write_all
        from modbench.tasks.registry import DATA_DIR

        log(f"no benchmark data: writing fixtures to {root or DATA_DIR}")
        write_all(Path(root or DATA_DIR))


def _tables(request: MatrixRequest, log) -> None:
    from modbench.suite.tables import write_tables

    written = write_tables(request.output, request.tables)
    log(f"tables: {len(written)} files in {request.tables}")
    if request.plots:
        from modbench.suite.plots import write_plots

        log(f"plots: {len(write_plots(request.output, request.tables))} files in {request.tables}")


def _list_failed(failed: list[str], cells: int) -> None:
    import sys

    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {cells} cell(s) failed", file=sys.stderr)


def _dry_run(slice_name: str, cfg, todo, folder: Path, log) -> int:
    """What would run, and nothing else: the sbatch script of the job array (slurm) and each cell's command."""
    from modbench.suite.launcher import cell_argv

    processes = cfg.processes_per_cell()
    if cfg.kind == "slurm":
        from modbench.suite.slurm import sbatch_script

        if not todo:
            log(f"slice {slice_name}: every cell has finished; nothing to submit")
            return 0
        log(sbatch_script(cfg, slice_name, folder, len(todo)))
        log(f"# {len(todo)} cell(s); array task i runs cell i (in the job's process; torchrun when data-parallel),"
            " the equivalent of:")
    for i, spec in enumerate(todo):
        log(f"# {i}: {' '.join(cell_argv(spec, processes))}")
    return 0


def _status(specs, folder: Path, log) -> int:
    from tabulate import tabulate

    from modbench.suite.launcher import LaunchState, status_rows

    state = LaunchState.load(folder)
    job_state = None
    if state is not None and state.submitit != "debug":
        from modbench.suite.slurm import job_state as scheduler_state

        job_state = lambda job_id: scheduler_state(state, job_id)  # noqa: E731
    rows = status_rows(specs, state, job_state)
    log(tabulate(rows, headers="keys"))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    log(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + f" of {len(rows)} cell(s)")
    return 0


def _collect(request: MatrixRequest, cfg, specs, folder: Path, log) -> int:
    """Wait for a detached submission (resubmitting failed cells while they have attempts left), then the tables;
    without one, the tables of what has run. Non-zero when a cell has not ended ok."""
    import sys
    from dataclasses import replace

    from modbench.suite.launcher import LaunchState, cell_error, cell_status

    state = LaunchState.load(folder)
    failed: list[str] = []
    watched: set[str] = set()
    try:
        if state is not None:
            from modbench.suite import slurm

            cfg = replace(cfg, submitit=state.submitit)
            mine = [s for s in specs if s.run_id in state.cells]
            watched = {s.run_id for s in mine}
            executor = slurm.make_executor(cfg, request.slice, folder)
            failed += slurm.watch(executor, mine, cfg.processes_per_cell(), state, cfg.retries,
                                  cfg.poll_seconds if state.submitit == "slurm" else 0.5)
        for spec in specs:
            if spec.run_id not in watched and cell_status(spec) != "ok":
                failed.append(f"{spec.run_id}: {cell_status(spec)}: " + cell_error(spec))
        _tables(request, log)
    except KeyboardInterrupt:
        print("stopped watching; the jobs keep running (--collect again waits for them)", file=sys.stderr)
        return 130
    finally:
        _list_failed(failed, len(specs))
    return 1 if failed else 0
