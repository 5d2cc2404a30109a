"""The matrix on a SLURM cluster, through submitit: the cells as one job array, then watched until they end.

Imported only for `--launcher slurm` (it imports submitit). Each array task runs one cell (`CellJob`: the
runner in that process, or torchrun across the cell's GPUs). Pre-empted or timed out, a task is requeued by
submitit (`checkpoint` resubmits the same call; up to `retries` time-outs) and resumes from its run folder's
records. A task that ends without an ok run.json is submitted again, up to `retries` times, by whoever is
watching: the attached `modbench matrix`, or a later `modbench matrix --collect` after `--detach`. The run
folders and submitit's folder (scripts, pickles, logs, state.json) must be on storage the nodes share.
`submitit: local | debug` swaps in submitit's own executors, which run the same jobs on this machine (tests).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import submitit
from submitit.slurm.slurm import _convert_mem, _make_sbatch_string

from modbench.suite.launcher import CellRecord, LauncherConfig, LaunchState, cell_error, cell_status, run_cell

_LIVE_JOBS: dict[str, submitit.Job] = {}  # jobs this process submitted (a local job's process lives here)


class CellJob(submitit.helpers.Checkpointable):
    """One matrix cell as a submitit job; `checkpoint` (inherited) requeues the same call on pre-emption or
    time-out, and the runner resumes from the records already written."""

    def __call__(self, spec: dict, processes: int = 1) -> dict:
        # SIGTERM stays submitit's: on pre-emption SLURM sends it before the signal that requeues the job
        return run_cell(spec, processes, handle_sigterm=False)


def sbatch_parameters(cfg: LauncherConfig, slice_name: str) -> dict:
    """The job's sbatch options, in submitit's SlurmExecutor names (what --dry-run prints is made from these)."""
    params = {"job_name": f"modbench-{slice_name}", "time": cfg.time_min, "array_parallelism": cfg.array_parallelism,
              "stderr_to_stdout": True}
    if cfg.partition:
        params["partition"] = cfg.partition
    if cfg.gpus:
        params["gpus_per_node"] = cfg.gpus
    if cfg.cpus:
        params["cpus_per_task"] = cfg.cpus
    if cfg.mem_gb:
        params["mem"] = _convert_mem(cfg.mem_gb)
    for name in ("account", "qos", "constraint"):
        if getattr(cfg, name):
            params[name] = getattr(cfg, name)
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    return params


def sbatch_script(cfg: LauncherConfig, slice_name: str, folder: Path, cells: int) -> str:
    """The sbatch script of the job array submitit writes for `cells` cells (--dry-run)."""
    command = _job_command(shlex.quote(sys.executable), folder)
    params = sbatch_parameters(cfg, slice_name)
    if cells == 1:  # a single job, not an array
        return _make_sbatch_string(command=command, folder=folder, **params)
    return _make_sbatch_string(command=command, folder=folder, map_count=cells, **params)


def _job_command(python: str, folder: Path) -> str:
    """What each job runs: our entry point (suite/submitit_job.py), which runs submitit's own after making sure
    submitit can start without pkg_resources."""
    return f"{python} -u -m modbench.suite.submitit_job {shlex.quote(str(folder))}"


class _SlurmExecutor(submitit.SlurmExecutor):
    @property
    def _submitit_command_str(self) -> str:
        return _job_command(self.python, self.folder)


class _LocalExecutor(submitit.LocalExecutor):
    @property
    def _submitit_command_str(self) -> str:
        return _job_command(self.python, self.folder)


def make_executor(cfg: LauncherConfig, slice_name: str, folder: Path) -> submitit.Executor:
    if cfg.submitit == "debug":  # runs each job in this process when its result is asked for
        return submitit.DebugExecutor(folder)
    if cfg.submitit == "local":
        executor = _LocalExecutor(folder, max_num_timeout=cfg.retries)
        executor.update_parameters(timeout_min=cfg.time_min, gpus_per_node=cfg.gpus, stderr_to_stdout=True,
                                   **({"setup": list(cfg.setup)} if cfg.setup else {}))
        return executor
    executor = _SlurmExecutor(folder, max_num_timeout=cfg.retries)
    executor.update_parameters(**sbatch_parameters(cfg, slice_name))
    return executor


def submit(executor: submitit.Executor, specs, processes: int, state: LaunchState) -> None:
    """Every cell at once, as one job array (SLURM); the job ids go to state.json."""
    with executor.batch():
        jobs = [executor.submit(CellJob(), asdict(spec), processes) for spec in specs]
    for spec, job in zip(specs, jobs):
        _LIVE_JOBS[job.job_id] = job
        cell = state.cells.setdefault(spec.run_id, CellRecord())
        cell.job_id, cell.attempts, cell.status = job.job_id, cell.attempts + 1, ""
    state.save()


def job_for(state: LaunchState, job_id: str) -> submitit.Job:
    """The job behind an id, in this process or (after --detach) rebuilt from submitit's folder."""
    if job_id in _LIVE_JOBS:
        return _LIVE_JOBS[job_id]
    if state.submitit == "local":
        return submitit.LocalJob(folder=state.folder, job_id=job_id)
    if state.submitit == "slurm":
        return submitit.SlurmJob(folder=state.folder, job_id=job_id)
    raise ValueError(f"job {job_id}: submitit's debug jobs live only in the process that made them")


def job_state(state: LaunchState, job_id: str) -> str:
    try:
        job = job_for(state, job_id)
        if isinstance(job, submitit.LocalJob) and job._process is None:
            return "RUNNING" if _pid_running(int(job_id)) else "ENDED"
        return job.state
    except Exception as exc:  # a status display: the scheduler may not know the job any more
        return f"unknown ({type(exc).__name__})"


def still_running(state: LaunchState) -> list[str]:
    """The jobs of a submission that have not ended (none for debug jobs: they ended with their process)."""
    if state.submitit == "debug":
        return []
    return [c.job_id for c in state.cells.values() if not c.status and _active(job_for(state, c.job_id))]


def _active(job: submitit.Job) -> bool:
    if isinstance(job, submitit.LocalJob) and job._process is None:  # submitted by an earlier invocation
        return _pid_running(int(job.job_id))
    return not job.done()


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def watch(executor: submitit.Executor, specs, processes: int, state: LaunchState, retries: int, poll: float,
          log=print) -> list[str]:
    """Wait until every cell has ended ok or used up its attempts. A cell whose job ended without an ok run.json
    is submitted again (it resumes) while it has attempts left; a cancelled job is not. Returns the failed
    cells as 'run_id: first error'."""
    failed: dict[str, str] = {}
    while True:
        active = 0
        for spec in specs:
            cell = state.cells.get(spec.run_id)
            if cell is None or cell.status:
                continue
            job = job_for(state, cell.job_id)
            if _active(job):
                active += 1
                continue
            status = cell_status(spec)
            if status == "ok":
                cell.status = "ok"
                log(f"ok      {spec.run_id} (job {cell.job_id})")
                continue
            error = cell_error(spec) if status != "not started" else _job_error(job)
            cancelled = job_state(state, cell.job_id).startswith("CANCELLED")
            if cell.attempts <= retries and not cancelled:
                log(f"retry   {spec.run_id} (attempt {cell.attempts} failed: {(error.splitlines() or [''])[0]})")
                job = executor.submit(CellJob(), asdict(spec), processes)
                _LIVE_JOBS[job.job_id] = job
                cell.job_id, cell.attempts = job.job_id, cell.attempts + 1
                active += 1
            else:
                cell.status = "failed"
                failed[spec.run_id] = ("job cancelled; " if cancelled else "") + error
                log(f"FAILED  {spec.run_id} (job {cell.job_id}; log {Path(job.paths.stdout)})")
        state.save()
        if not active:
            break
        time.sleep(poll)
    for spec in specs:  # settled as failed by an earlier watch (before a --detach ... --collect, say)
        cell = state.cells.get(spec.run_id)
        if cell is not None and cell.status == "failed" and spec.run_id not in failed:
            failed[spec.run_id] = cell_error(spec)
    return [f"{rid}: {error}" for rid, error in failed.items()]


def _job_error(job: submitit.Job) -> str:
    """Why a job that never started its cell ended (submitit's own record of it)."""
    try:
        result = job.result()
        return result.get("error") or f"job {job.job_id} ended without a run folder"
    except Exception as exc:
        return f"job {job.job_id}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}"
