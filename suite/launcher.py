"""Where the matrix's cells run: this process, parallel local processes, or SLURM jobs (suite/slurm.py).

A cell is one `modbench run` (suite.runner.RunSpec). Whatever runs it, its run folder says how it ended
(run.json: ok / failed / interrupted), so a failed or pre-empted cell is simply run again: the runner resumes
from the records of the samples that finished. A cell with more than one process evaluates data-parallel
(torchrun: one process per GPU, gloo on a CPU); lmms-eval shards the requests and gathers them on rank 0.

`launcher` in matrix.yaml is a `LauncherConfig` (unknown keys are errors); `modbench matrix` flags override it.
Nothing here imports torch or submitit at module level.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

LAUNCHERS = ("local", "slurm")
SUBMITIT_EXECUTORS = ("slurm", "local", "debug")


@dataclass
class LauncherConfig:
    """How the cells of a slice run. Per-cell resources apply to each job (slurm) or each process group (local)."""

    kind: str = "local"  # local | slurm
    jobs: int = 1  # local: cells at once (1 with one process per cell: in this process, one after another)
    retries: int = 0  # a failed or pre-empted cell is run again up to this many times; each attempt resumes
    gpus: int = 0  # per cell (slurm --gpus-per-node; local: CUDA_VISIBLE_DEVICES of each parallel slot)
    processes: int = 0  # per cell, data parallel (torchrun); 0: one per GPU, at least one
    cpus: int = 0  # per cell (slurm --cpus-per-task); 0: unset
    mem_gb: float = 0.0  # per cell (slurm --mem); 0: the partition's default
    time_min: int = 240  # per cell (slurm --time); a timed-out cell is requeued and resumes, as a pre-empted one
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    array_parallelism: int = 64  # slurm: array tasks running at once
    setup: list[str] = field(default_factory=list)  # slurm: shell lines before each cell (module load, venv)
    logs: str = ""  # submitit's folder (scripts, pickles, logs, state.json); default <output>/.launcher/<slice>
    submitit: str = "slurm"  # the executor behind kind slurm: slurm (sbatch), or submitit's local / debug ones
    poll_seconds: float = 30.0  # between two looks at the jobs (sacct) while waiting

    def validate(self) -> "LauncherConfig":
        from modbench.models.config import ConfigError

        ints = ("jobs", "retries", "gpus", "processes", "cpus", "time_min", "array_parallelism")
        checks = [
            (self.kind in LAUNCHERS, f"kind must be one of {LAUNCHERS}, got {self.kind!r}"),
            (self.submitit in SUBMITIT_EXECUTORS, f"submitit must be one of {SUBMITIT_EXECUTORS}, got {self.submitit!r}"),
            (all(isinstance(getattr(self, n), int) and getattr(self, n) >= 0 for n in ints),
             f"{', '.join(ints)} must be integers >= 0"),
            (self.jobs >= 1 and self.time_min >= 1 and self.array_parallelism >= 1,
             "jobs, time_min and array_parallelism must be >= 1"),
            (isinstance(self.mem_gb, (int, float)) and self.mem_gb >= 0, "mem_gb must be a number >= 0"),
            (isinstance(self.setup, list) and all(isinstance(s, str) for s in self.setup),
             "setup must be a list of shell lines"),
            (isinstance(self.poll_seconds, (int, float)) and self.poll_seconds >= 0, "poll_seconds must be >= 0"),
            (not self.gpus or self.processes <= self.gpus,
             f"processes ({self.processes}) > gpus ({self.gpus}): one process per GPU at most (gpus 0: CPU processes)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"launcher: {message}")
        return self

    def processes_per_cell(self) -> int:
        return self.processes or max(1, self.gpus)

    def folder(self, output: str, slice_name: str) -> Path:
        return Path(self.logs) if self.logs else Path(output) / ".launcher" / slice_name


def with_overrides(cfg: LauncherConfig, overrides: dict) -> LauncherConfig:
    """Flags over the YAML: only the flags that were given (not None)."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None}).validate()


# ---------------------------------------------------------------------------------------------------------
# one cell


def cell_argv(spec, processes: int = 1, python: str = sys.executable) -> list[str]:
    """The command that runs one cell: `modbench run` with the cell's spec, under torchrun when data-parallel."""
    if spec.fixed_skip is not None:
        raise ValueError(f"{spec.run_id}: a matrix cell cannot carry fixed_skip (no `modbench run` flag)")
    argv = ["-m", "modbench", "run", "--model", spec.model, "--tasks", ",".join(spec.tasks),
            "--protocol", spec.protocol, "--batch-size", str(spec.batch_size), "--seed", str(spec.seed),
            "--output", str(spec.output), "--run-id", spec.run_id]
    for flag, value in (("--limit", spec.limit), ("--dtype", spec.dtype), ("--device", spec.device),
                        ("--attn-implementation", spec.attn_implementation), ("--data-root", spec.data_root),
                        ("--max-new-tokens", spec.max_new_tokens)):
        if value not in (None, ""):
            argv += [flag, str(value)]
    if spec.measure_flops:
        argv.append("--measure-flops")
    if processes > 1:  # one process per GPU; --standalone picks a free rendezvous port on this node
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *argv]
    return [python, *argv]


def cell_status(spec) -> str:
    """ok / failed / interrupted (run.json), started (an attempt without a result yet) or not started."""
    folder = Path(spec.output) / spec.run_id
    try:
        return json.loads((folder / "run.json").read_text()).get("status", "failed")
    except FileNotFoundError:
        return "started" if (folder / "attempt.json").exists() else "not started"
    except json.JSONDecodeError:
        return "failed"


def cell_error(spec) -> str:
    """The first error run.json names, or what is known without one."""
    path = Path(spec.output) / spec.run_id / "run.json"
    try:
        run = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return f"no run.json in {path.parent} (the process ended before writing it: see its log)"
    errors = run.get("errors") or []
    return errors[0] if errors else run.get("status", "failed")


def run_cell(spec: dict, processes: int = 1, handle_sigterm: bool = True) -> dict:
    """Run one cell (in a job or a worker): in this process, or under torchrun when data-parallel. Never raises
    for a failed run (run.json records it); returns {run_id, status, error}."""
    from modbench.suite.runner import RunSpec

    spec = RunSpec(**spec)
    if processes > 1:
        code = subprocess.run(cell_argv(spec, processes)).returncode
        status = cell_status(spec)
        if code and status == "ok":  # a rank failed after rank 0 wrote its result
            status = "failed"
    else:
        from modbench.suite.runner import run

        try:
            status = run(spec, progress=False, handle_sigterm=handle_sigterm).status
        except Exception as exc:  # the runner records its own errors; this is anything before that
            return {"run_id": spec.run_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        except KeyboardInterrupt:  # SIGTERM in a job (scancel, pre-emption): run.json says "interrupted"
            status = "interrupted"
    return {"run_id": spec.run_id, "status": status, "error": "" if status == "ok" else cell_error(spec)}


# ---------------------------------------------------------------------------------------------------------
# the local launcher


def run_in_process(specs, retries: int, failed: list[str], log=print) -> None:
    """One cell after another in this process (--jobs 1, one process per cell). A failed cell is run again up
    to `retries` times (it resumes); a cell that still fails is appended to `failed` and the next one runs."""
    from tqdm import tqdm

    from modbench.suite.runner import run

    for spec in tqdm(specs, desc="matrix", unit="run"):
        for attempt in range(retries + 1):
            try:
                outcome = run(spec, progress=False)
                error = "" if outcome.status == "ok" else (outcome.errors[0] if outcome.errors else outcome.status)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            if not error:
                break
            if attempt < retries:
                log(f"{spec.run_id}: attempt {attempt + 1} failed ({error.splitlines()[0]}); running it again "
                    "(it resumes)")
        if error:
            failed.append(f"{spec.run_id}: {error}")


def run_in_processes(specs, cfg: LauncherConfig, logs: Path, failed: list[str], log=print, argv_for=None) -> None:
    """Up to cfg.jobs cells at once, each its own process group (torchrun when data-parallel), its output in
    logs/<run_id>.log. A failed cell is started again up to cfg.retries times (it resumes). Ctrl-C / SIGTERM
    stop every running cell (they write run.json "interrupted") and are raised again."""
    import signal

    argv_for = argv_for or (lambda spec: cell_argv(spec, cfg.processes_per_cell()))
    logs.mkdir(parents=True, exist_ok=True)
    queue = [(spec, 0) for spec in specs]
    running: dict[int, tuple] = {}  # slot -> (process, spec, attempt, log file)
    free = list(range(cfg.jobs))
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # N cells on one machine: each gets its share of the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (cfg.jobs * cfg.processes_per_cell())))

    def start(spec, attempt: int) -> None:
        slot = free.pop(0)
        slot_env = dict(env)
        if cfg.gpus:  # slot k gets GPUs [k * gpus, (k + 1) * gpus)
            slot_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot * cfg.gpus + g) for g in range(cfg.gpus))
        handle = (logs / f"{spec.run_id}.log").open("a")
        process = subprocess.Popen(argv_for(spec), stdout=handle, stderr=subprocess.STDOUT, env=slot_env,
                                   start_new_session=True)  # a Ctrl-C reaches the cells through us, once
        running[slot] = (process, spec, attempt, handle)

    try:
        while queue or running:
            while queue and free:
                start(*queue.pop(0))
            time.sleep(0.2)
            for slot, (process, spec, attempt, handle) in list(running.items()):
                if process.poll() is None:
                    continue
                handle.close()
                del running[slot]
                free.append(slot)
                status = cell_status(spec)
                if status == "ok" and process.returncode == 0:
                    log(f"ok      {spec.run_id}")
                    continue
                error = cell_error(spec) if status != "ok" else f"exit status {process.returncode}"
                if attempt < cfg.retries:
                    log(f"retry   {spec.run_id} (attempt {attempt + 1} failed: {error.splitlines()[0]})")
                    queue.insert(0, (spec, attempt + 1))
                else:
                    log(f"FAILED  {spec.run_id} (log: {logs / (spec.run_id + '.log')})")
                    failed.append(f"{spec.run_id}: {error}")
    except BaseException:
        for process, *_ in running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _, _, handle in running.values():
            process.wait()
            handle.close()
        raise


# ---------------------------------------------------------------------------------------------------------
# what a detached matrix keeps between invocations


@dataclass
class CellRecord:
    job_id: str = ""
    attempts: int = 0
    status: str = ""  # "" while running; ok / failed once settled


@dataclass
class LaunchState:
    """<logs>/state.json: which job runs which cell, so that --status and --collect find them later."""

    slice: str
    submitit: str
    folder: str
    output: str
    cells: dict[str, CellRecord] = field(default_factory=dict)

    @classmethod
    def path(cls, folder: Path) -> Path:
        return Path(folder) / "state.json"

    @classmethod
    def load(cls, folder: Path) -> "LaunchState | None":
        from modbench.models.config import from_dict

        path = cls.path(folder)
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        state = from_dict(cls, {**data, "cells": {}}, str(path))
        state.cells = {k: from_dict(CellRecord, v, f"{path}: cells.{k}") for k, v in data.get("cells", {}).items()}
        return state

    def save(self) -> Path:
        from modbench.suite.results import write_json_atomic

        return write_json_atomic(self.path(Path(self.folder)), asdict(self))


def status_rows(specs, state: LaunchState | None, job_state=None) -> list[dict]:
    """Per cell: its run folder's status, and the job that runs it (id, attempts, the scheduler's state)."""
    rows = []
    for spec in specs:
        cell = state.cells.get(spec.run_id) if state else None
        row = {"cell": spec.run_id, "status": cell_status(spec)}
        if cell is not None:
            row.update(job=cell.job_id, attempts=cell.attempts,
                       job_state=job_state(cell.job_id) if job_state and cell.job_id and row["status"] != "ok" else "")
        rows.append(row)
    return rows
