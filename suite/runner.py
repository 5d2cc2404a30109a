"""`modbench run`: lmms-eval's Python API over our plugin and local tasks, with a results file of our own.

Unlike the lmms-eval CLI (which exits 0 when a task fails), a run that fails — an exception, a task with no
results, a sample that failed — is reported and returns non-zero, and its run.json says status "failed".
Files per run (atomic writes): run.json (schema_version, spec, environment, metrics with stderr, efficiency
from the per-sample records), samples.jsonl (lmms-eval's logged samples), records.jsonl (the plugin's
per-sample routing / token / timing records).
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from suite.results import results_record, write_json_atomic, write_text_atomic
from tasks.registry import DATA_DIR, TASKS_DIR  # noqa: F401  (re-exported: where the YAMLs read by default)


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

    def model_args(self, records: Path) -> str:
        args = {"pretrained": self.model, "protocol": self.protocol,
                "seed": self.seed, "records": str(records), "dtype": self.dtype, "device": self.device,
                "attn_implementation": self.attn_implementation,
                "measure_flops": "true" if self.measure_flops else "",
                "fixed_skip": "" if self.fixed_skip is None else self.fixed_skip}
        return ",".join(f"{k}={v}" for k, v in args.items() if v not in ("", None))

    def default_run_id(self) -> str:
        name = Path(self.model).name if os.sep in self.model else self.model
        return f"{name}__{'+'.join(self.tasks)}__{self.protocol}__b{self.batch_size}" + (
            f"__l{self.limit}" if self.limit else "")


@dataclass
class RunOutcome:
    status: str
    run_dir: Path
    errors: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def check_data(tasks: list[str], data_root: str | Path | None = None) -> None:
    """A clear error before lmms-eval turns a missing parquet into a hub lookup."""
    from tasks.registry import data_files_under

    root = Path(data_root) if data_root else DATA_DIR
    if not root.exists():
        raise FileNotFoundError(
            f"no benchmark data at {root}: run `modbench data fixtures` (or `modbench data prepare`)"
            + (f" with --root {root}" if data_root else ""))
    missing = [str(p) for task in tasks for p in data_files_under(task, data_root) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"benchmark data missing: {missing[:5]} (run `modbench data fixtures`)")


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


def run(spec: RunSpec, progress: bool = True) -> RunOutcome:
    import models  # noqa: F401  (fail early on a broken install)

    run_dir = Path(spec.output) / (spec.run_id or spec.default_run_id())
    run_dir.mkdir(parents=True, exist_ok=True)
    records = run_dir / "records.jsonl"
    records.unlink(missing_ok=True)
    errors: list[str] = []
    results = None
    try:
        check_data(spec.tasks, spec.data_root)
        from lmms_eval.evaluator import simple_evaluate

        from tasks.registry import task_manager

        manager = task_manager(spec.data_root)
        unknown = [t for t in spec.tasks if t not in manager.all_tasks]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; local tasks: "
                             f"{sorted(t for t in manager.all_tasks if t.endswith('_local') or '_local_' in t)}")
        results = simple_evaluate(
            model="modbench", model_args=spec.model_args(records), tasks=spec.tasks, limit=spec.limit,
            batch_size=spec.batch_size, task_manager=manager, log_samples=True, random_seed=spec.seed,
            numpy_random_seed=spec.seed, torch_random_seed=spec.seed, verbosity="WARNING" if not progress else "INFO",
        )
    except Exception as exc:  # recorded in run.json and the exit status, never swallowed
        errors.append(f"{type(exc).__name__}: {exc}")
        errors.append(traceback.format_exc(limit=8))
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
    sample_records = _read_records(records)
    failed_samples = [r for r in sample_records if r.get("status") != "ok"]
    if failed_samples:
        errors.append(f"{len(failed_samples)} sample(s) failed")
    _write_jsonl_atomic(run_dir / "samples.jsonl", samples)
    status = "failed" if errors else "ok"
    from suite.efficiency import efficiency_from_records

    resolved = {}
    try:  # what actually ran, where the spec left the variant's defaults
        import models

        cfg = models.config_for(spec.model)
        resolved = {"dtype": spec.dtype or cfg.dtype, "attn_implementation": spec.attn_implementation or
                    cfg.attn_implementation, "mod_scheme": cfg.mod.scheme, "mod_layers": list(cfg.mod.layers)}
    except Exception as exc:  # the model itself failed: already among the errors
        resolved = {"error": f"{type(exc).__name__}: {exc}"}
    import torch

    from suite.latency import peak_memory_bytes

    device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    payload = {
        "status": status, "errors": errors, "resolved": resolved, "metrics": metrics,
        "peak_memory": peak_memory_bytes(device),
        "efficiency": efficiency_from_records(spec.model, sample_records) if sample_records else None,
        "n_samples": len(samples), "n_records": len(sample_records),
        "files": {"samples": "samples.jsonl", "records": "records.jsonl"},
    }
    write_json_atomic(run_dir / "run.json", results_record("run", asdict(spec), **payload))
    return RunOutcome(status, run_dir, errors, metrics)


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))
