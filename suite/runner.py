"""`modbench run`: lmms-eval's Python API over our plugin and local tasks, with a results file of our own.

Unlike the lmms-eval CLI (which exits 0 when a task fails), a run that fails — an exception, a task with no
results, a sample that failed — is reported and returns non-zero, and its run.json says status "failed".
Files per run (atomic writes): run.json (schema_version, spec, environment, metrics with stderr, efficiency
from the per-sample records), samples.jsonl (lmms-eval's logged samples), records.jsonl (the plugin's
per-sample routing / token / timing records), attempt.json (what the records were computed with).

Resume: records.jsonl grows per batch as samples finish. An attempt killed (SIGKILL), interrupted (SIGTERM,
Ctrl-C: run.json says "interrupted") or failed leaves its finished samples there; the next attempt with the
same fingerprint (the spec, the package versions, the checkpoint's and the data's files) answers those from
their records without running the model, and runs only the rest. A run that finished ok starts over when run
again (`modbench matrix` skips it instead).

Data parallel (`torchrun --nproc_per_node N -m modbench run ...`, one process per GPU, gloo on a CPU): lmms-eval
shards the requests across the ranks and gathers samples and metrics on rank 0. Each rank appends its records
to records.jsonl.rank<r> and resumes from it (the shards depend on the world size, which is part of the
fingerprint); rank 0 decides the attempt, merges the ranks' records into records.jsonl and writes run.json.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from modbench.suite.results import results_record, write_json_atomic, write_text_atomic
from modbench.tasks.registry import check_data


@dataclass
class RunSpec:
    model: str
    tasks: list[str]
    limit: int | None = None
    protocol: str = "lmms-eval"
    dtype: str = ""
    device: str = ""
    batch_size: int = 1
    attn_implementation: str = ""
    seed: int = 0
    output: str = "results/runs"
    run_id: str = ""
    measure_flops: bool = False
    data_root: str = ""  # benchmark data (default: tasks/data); a root elsewhere leaves the checkout untouched
    fixed_skip: float | None = None  # γ-MoD: a controlled skip ratio instead of the released threshold rule
    max_new_tokens: int | None = None  # a cap on every task's new tokens (smoke tests of untrained models)
    random_init: bool = False  # a variant with a hub id: its config with random weights, not the released checkpoint

    def model_args(self, records: Path, resume: bool = False) -> str:
        args = {"pretrained": self.model, "protocol": self.protocol,
                "seed": self.seed, "records": str(records), "dtype": self.dtype, "device": self.device,
                "attn_implementation": self.attn_implementation,
                "measure_flops": "true" if self.measure_flops else "",
                "fixed_skip": "" if self.fixed_skip is None else self.fixed_skip,
                "max_new_tokens": "" if self.max_new_tokens is None else self.max_new_tokens,
                "random_init": "true" if self.random_init else "",
                "resume": "true" if resume else ""}
        return ",".join(f"{k}={v}" for k, v in args.items() if v not in ("", None))

    def default_run_id(self) -> str:
        name = Path(self.model).name if os.sep in self.model else self.model
        return f"{name}__{'+'.join(self.tasks)}__{self.protocol}__b{self.batch_size}" + (
            f"__l{self.limit}" if self.limit else "") + (
            f"__m{self.max_new_tokens}" if self.max_new_tokens is not None else "") + (  # capped answers: another run
            "__random" if self.random_init else "")


@dataclass
class RunOutcome:
    status: str  # ok | failed | interrupted
    run_dir: Path
    errors: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    resumed_samples: int = 0


@dataclass
class Attempt:
    """attempt.json: what the run folder's records were computed with. The next attempt resumes from them only
    under the same fingerprint; otherwise it starts over."""

    fingerprint: dict
    started: str = ""
    resumed_samples: int = 0


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM during a run. A KeyboardInterrupt (not an Exception), so that no `except Exception` on the way
    (the plugin records a raising sample as failed and goes on) can take it for a sample's error."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise RunInterrupted(signum)


def fingerprint(spec: RunSpec, world: int = 1) -> dict:
    """What a run's per-sample answers depend on: the spec (not where it is written), the packages that compute
    them, and the checkpoint's and benchmark data's files (size and modification time, not contents: cheap)."""
    from importlib.metadata import version

    from modbench.models.checkpoints import CheckpointError
    from modbench.models.config import ConfigError
    from modbench.models.resolver import checkpoint_path
    from modbench.tasks.registry import data_files_under

    try:  # a released variant's or a hub id's cached snapshot too; a random init has no files
        checkpoint = checkpoint_path(spec.model, spec.random_init)
    except (CheckpointError, ConfigError):
        checkpoint = None  # the run itself says what is missing
    files = sorted(p for p in checkpoint.iterdir() if p.is_file()) if checkpoint else []
    files += [p for task in spec.tasks for p in data_files_under(task, spec.data_root)]
    return {"spec": {k: v for k, v in asdict(spec).items() if k not in ("output", "run_id")},
            "versions": {name: version(name) for name in ("lmms-eval", "torch", "transformers")},
            "files": {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()},
            **({"processes": world} if world > 1 else {})}  # the request shards depend on the world size


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun / accelerate launch set RANK, WORLD_SIZE)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def record_files(records: Path, world: int) -> list[Path]:
    """Where the plugin appends records: one file per rank when data-parallel (it adds .rank<r>)."""
    return [records] if world == 1 else [records.with_name(f"{records.name}.rank{r}") for r in range(world)]


def _start_attempt(spec: RunSpec, run_dir: Path, records: Path, world: int = 1) -> bool:
    """Decide whether this attempt resumes, clear what it replaces, record its fingerprint. True: resume."""
    from modbench.models.lmms_plugin import model_record_path

    attempt_path, run_json = run_dir / "attempt.json", run_dir / "run.json"
    current = json.loads(json.dumps(fingerprint(spec, world), default=str))  # as it reads back from the file
    previous = None
    if attempt_path.exists():
        try:
            previous = Attempt(**json.loads(attempt_path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{attempt_path}: unreadable ({exc}); delete it to start the run over") from None
    finished_ok = run_json.exists() and json.loads(run_json.read_text()).get("status") == "ok"
    files = record_files(records, world)
    resume = (previous is not None and previous.fingerprint == current and not finished_ok
              and any(f.exists() for f in files))
    run_json.unlink(missing_ok=True)  # this attempt replaces them: a half-done folder never looks finished
    model_record_path(records).unlink(missing_ok=True)  # the plugin records the model it resolves anew
    (run_dir / "samples.jsonl").unlink(missing_ok=True)
    for stale in run_dir.glob("errors.rank*.txt"):
        stale.unlink()
    if world > 1:  # the merged file of an earlier attempt; the rank files are what resumes
        records.unlink(missing_ok=True)
    if not resume:
        for path in [records, *run_dir.glob(f"{records.name}.rank*")]:
            path.unlink(missing_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(attempt_path, asdict(Attempt(current, started)))
    return resume


def check_names(spec: RunSpec, manager) -> None:
    """A misspelt model or task is named as such, with the closest names (difflib), before anything runs."""
    from modbench.models.resolver import model_name_error
    from modbench.tasks.registry import close_task_names

    problem = model_name_error(spec.model)
    if problem:
        raise ValueError(problem)
    local = sorted(t for t in manager.all_tasks if t.endswith("_local") or "_local_" in t)
    unknown = [t for t in spec.tasks if t not in manager.all_tasks]
    if unknown:
        hints = []
        for task in unknown:
            close = close_task_names(task, local)
            hints.append(f"{task!r} (did you mean {', '.join(close)}?)" if close else repr(task))
        raise ValueError(f"unknown task(s) {', '.join(hints)}; local tasks: {local}")


def _flatten_metrics(results: dict) -> dict:
    out = {}
    for task, values in results.items():
        metrics = {}
        for key, value in values.items():
            if key == "alias" or "_stderr" in key:
                continue
            if not isinstance(value, (int, float, str)):
                continue  # per-sample payloads some tasks return (submission files), not metrics
            name = key.split(",")[0]
            stderr = values.get(key.replace(",", "_stderr,", 1))
            metrics[name] = {"value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None}
        out[task] = metrics
    return out


def run(spec: RunSpec, progress: bool = True, handle_sigterm: bool = True) -> RunOutcome:
    """One attempt at a run. Raises RunInterrupted / KeyboardInterrupt after writing run.json ("interrupted").
    handle_sigterm=False leaves SIGTERM to the caller (a submitit job, whose own handler requeues it)."""
    try:
        return _run(spec, progress, handle_sigterm)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Under torchrun, each rank tears its process group down before the interpreter exits: left to exit, the
    gloo threads can outlive it and abort the process ("terminate called without an active exception") after a
    run that finished ok."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run(spec: RunSpec, progress: bool, handle_sigterm: bool) -> RunOutcome:
    import modbench.models.vlm  # noqa: F401  (fail early on a broken install: the model code and torch)

    rank, world = rank_and_world()
    run_dir = Path(spec.output) / (spec.run_id or spec.default_run_id())
    run_dir.mkdir(parents=True, exist_ok=True)
    records = run_dir / "records.jsonl"
    if world > 1:
        dist = _process_group()
        decision = [_start_attempt(spec, run_dir, records, world) if rank == 0 else None]
        dist.broadcast_object_list(decision, src=0)  # no rank opens its records before rank 0 has decided
        resume = decision[0]
    else:
        resume = _start_attempt(spec, run_dir, records)
    errors: list[str] = []
    results = None
    evaluated = False  # simple_evaluate returned (so every rank passed its collectives)
    resumed = 0
    interrupted: KeyboardInterrupt | None = None
    restore = None
    if handle_sigterm and threading.current_thread() is threading.main_thread():  # handlers: main thread only
        restore = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        from modbench.tasks.registry import defer_unused_lmms_eval_imports, task_manager

        defer_unused_lmms_eval_imports()
        from lmms_eval.evaluator import simple_evaluate

        manager = task_manager(spec.data_root)
        check_names(spec, manager)
        check_data(spec.tasks, spec.data_root)
        if resume:
            from modbench.models.lmms_plugin import resume_records

            resumed = len(resume_records(record_files(records, world)[rank]))
            if world > 1:
                counts = [0] * world
                dist.all_gather_object(counts, resumed)
                resumed = sum(counts)
            if rank == 0:
                _update_attempt(run_dir, resumed)
            if progress and rank == 0:
                print(f"resuming {run_dir}: {resumed} finished sample(s) answered from records", flush=True)
        results = simple_evaluate(
            model="modbench", model_args=spec.model_args(records, resume), tasks=spec.tasks, limit=spec.limit,
            batch_size=spec.batch_size, task_manager=manager, log_samples=True, random_seed=spec.seed,
            numpy_random_seed=spec.seed, torch_random_seed=spec.seed, verbosity="WARNING" if not progress else "INFO",
            distributed_executor_backend="torchrun",  # torch.distributed collectives (the plugin has no accelerator)
        )
        evaluated = True
    except KeyboardInterrupt as exc:  # SIGTERM (RunInterrupted) or Ctrl-C: recorded, then raised again
        interrupted = exc
        if restore is not None:  # a second SIGTERM while run.json is written acts at once
            signal.signal(signal.SIGTERM, restore)
        errors.append(f"interrupted ({exc.args[0] if exc.args else 'SIGINT'}): the same spec resumes from "
                      "records.jsonl")
    except Exception as exc:  # recorded in run.json and the exit status, never swallowed
        errors.append(f"{type(exc).__name__}: {exc}")
        errors.append(traceback.format_exc(limit=8))
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    if rank != 0:
        return _other_rank_result(run_dir, rank, errors, interrupted, evaluated)
    errors += [p.read_text() for p in sorted(run_dir.glob("errors.rank*.txt"))]  # what the other ranks hit
    metrics = {}
    samples = []
    if results is not None:
        metrics = _flatten_metrics(results.get("results", {}))
        for task in spec.tasks:
            if task not in metrics or not metrics[task]:
                errors.append(f"task {task!r} produced no results")
        for task, rows in (results.get("samples") or {}).items():
            samples += [{"task": task, **row} for row in rows]
    elif not errors:
        errors.append("lmms-eval returned no results")
    sample_records = [row for path in record_files(records, world) for row in _read_records(path)]
    if world > 1:  # one file per run, as a single process writes it (the rank files stay for a resume)
        sample_records = _unique_records(sample_records)
        _write_jsonl_atomic(records, sample_records)
    failed_samples = [r for r in sample_records if r.get("status") != "ok"]
    if failed_samples:
        errors.append(f"{len(failed_samples)} sample(s) failed: " + "; ".join(
            f"{r.get('task')} doc {r.get('doc_id')}: {r.get('error')}" for r in failed_samples[:3]))
    _write_jsonl_atomic(run_dir / "samples.jsonl", samples)
    status = "interrupted" if interrupted is not None else "failed" if errors else "ok"
    from modbench.suite.efficiency import efficiency_from_records

    resolved, model_config = _resolved_model(records)
    import torch

    from modbench.suite.results import peak_memory_bytes

    device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    payload = {
        "status": status, "errors": errors, "resolved": resolved, "metrics": metrics,
        "peak_memory": peak_memory_bytes(device),
        "efficiency": efficiency_from_records(model_config, sample_records)
        if sample_records and model_config is not None and interrupted is None else None,
        "n_samples": len(samples), "n_records": len(sample_records), "resumed_samples": resumed,
        "files": {"samples": "samples.jsonl", "records": "records.jsonl", "attempt": "attempt.json"},
    }
    if world > 1:
        payload["processes"] = world
    write_json_atomic(run_dir / "run.json", results_record("run", asdict(spec), **payload))
    if interrupted is not None:
        raise interrupted
    if world > 1 and evaluated:  # the other ranks wait for the verdict (their exit status follows it)
        _process_group().broadcast_object_list([status, errors[:1]], src=0)
    return RunOutcome(status, run_dir, errors, metrics, resumed)


def _resolved_model(records: Path) -> tuple[dict, object]:
    """What actually ran, as the plugin resolved and recorded it (records.model.json): run.json's `resolved`
    block and the model config, or (why there is none, None) when the model never loaded."""
    from modbench.models.lmms_plugin import model_record_path
    from modbench.models.resolver import ResolvedModel

    path = model_record_path(records)
    if not path.exists():  # the plugin failed before it resolved the model: that error is among the errors
        return {"error": f"no {path.name}: the model was not resolved"}, None
    resolved = ResolvedModel.from_record(json.loads(path.read_text()))
    cfg = resolved.config
    return {"dtype": cfg.dtype, "attn_implementation": cfg.attn_implementation, "mod_scheme": cfg.mod.scheme,
            "mod_layers": list(cfg.mod.layers), "model": resolved.to_record()}, cfg


def _process_group():
    """torch.distributed, initialised as lmms-eval would for a plugin that does not (gloo; NCCL for CUDA
    tensors on a GPU, each rank on its LOCAL_RANK device)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend="cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group(backend="gloo")
    return dist


def _other_rank_result(run_dir: Path, rank: int, errors: list[str], interrupted, evaluated: bool) -> RunOutcome:
    """A rank other than 0: its errors go to a file rank 0 reads into run.json; with none, it takes rank 0's
    verdict. A failing rank returns at once, so that torchrun stops the others (rank 0 may wait in a collective)."""
    if errors:
        write_text_atomic(run_dir / f"errors.rank{rank}.txt", f"rank {rank}: " + "\n".join(errors))
    if interrupted is not None:
        raise interrupted
    if errors or not evaluated:
        return RunOutcome("failed", run_dir, errors)
    verdict = [None, None]
    _process_group().broadcast_object_list(verdict, src=0)
    return RunOutcome(verdict[0], run_dir, verdict[1] or [])


def _update_attempt(run_dir: Path, resumed: int) -> None:
    path = run_dir / "attempt.json"
    attempt = Attempt(**json.loads(path.read_text()))
    attempt.resumed_samples = resumed
    write_json_atomic(path, asdict(attempt))


def _unique_records(rows: list[dict]) -> list[dict]:
    """One record per request key (an ok one where there is one): lmms-eval pads a rank that has fewer requests
    with a copy of one of its requests, which the plugin records again."""
    chosen: dict[str, dict] = {}
    for row in rows:
        key = row.get("key") or id(row)
        if key not in chosen or (chosen[key].get("status") != "ok" and row.get("status") == "ok"):
            chosen[key] = row
    return list(chosen.values())


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for n, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines) - 1:
                raise
            # torn by an interruption mid-write: that sample did not finish (the next attempt drops the line)
    return rows


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))
