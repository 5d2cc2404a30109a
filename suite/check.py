"""`modbench check`: compare runs with a committed baseline, metric by metric.

Each check knows which direction is better and carries a tolerance and the baseline's provenance:
- accuracy ("higher"): may not drop by more than its tolerance;
- TFLOPs ("lower"): may not rise (beyond float noise);
- skip ratios ("equal"): stay within tolerance;
- latency ("lower_noisy"): only compared on matching hardware (device name), with a noise-aware threshold
  (the baseline's spread), else reported as skipped.
A metric missing from the runs fails. `--update-baselines` rewrites the file with provenance.

Two tolerance policies, chosen when the baseline is written and stored with every check:
- "fixed": the fixtures' runs (random weights, bit-deterministic): 2 accuracy points, 0.01 skip;
- "noise": runs of models this suite trained (the reproduction). Training is bitwise deterministic on one
  machine and thread count, but another CPU or thread count rounds some reductions differently (a norm weight's
  gradient, for one) and ends at other weights: an independent retraining. Accuracies may then drop by
  NOISE_Z standard errors of the difference of two evaluations on the eval set (binomial; at least the fixed
  tolerance), z = 3 so that a few dozen checks rarely fail together by chance; skip ratios move by 0.05.
  Only accuracies are checked: POPE's precision, recall, F1 and yes-ratio are no proportions over the eval set
  (and the yes-ratio has no better direction); a model near chance swings them from one retraining to the next.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from modbench.suite.results import SCHEMA_VERSION, environment, load_results, write_json_atomic

ACCURACY_TOLERANCE = 0.02  # absolute, on a 0..1 scale: fixtures are tiny, a sample is worth a few percent
SKIP_TOLERANCE = 0.01
FLOPS_TOLERANCE = 1e-9  # relative
NOISE_SKIP_TOLERANCE = 0.05
NOISE_Z = 3.0
TOLERANCE_POLICIES = ("fixed", "noise")


@dataclass
class Check:
    run_id: str
    metric: str  # dotted path inside run.json, e.g. metrics.gqa_local.exact_match.value
    value: float | str
    direction: str  # higher | lower | equal | lower_noisy
    tolerance: float
    device_name: str = ""


@dataclass
class Finding:
    check: Check
    current: float | str | None
    status: str  # pass | fail | skipped
    reason: str = ""


def _get(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def task_samples(run: dict, task: str) -> int:
    """Scored samples behind a task's metric (a group such as pope_local sums its member tasks, as the task
    registry lists them; a group not in it, its tasks named `<group>_...`)."""
    from modbench.tasks.registry import local_tasks

    per_task = (run.get("efficiency") or {}).get("per_task", {})
    if task in per_task:
        return int(per_task[task].get("n_samples", 0))
    entry = local_tasks().get(task)
    if entry is None:  # not one of ours (an lmms-eval built-in group): its subtasks as lmms-eval names them
        return sum(int(v.get("n_samples", 0)) for t, v in per_task.items() if t.startswith(task + "_"))
    return sum(int(per_task[t].get("n_samples", 0)) for t in entry.get("tasks") or [] if t in per_task)


def accuracy_tolerance(value: float, name: str, n: int, policy: str) -> float:
    from modbench.tasks.benchmarks import PERCENT_SUM, metric_kind

    percent_sum = metric_kind(name) == PERCENT_SUM  # (MME's) a sum of per-category percentages
    fixed = ACCURACY_TOLERANCE * (100.0 if percent_sum else 1.0)
    if policy == "fixed":
        return fixed
    if n <= 0:
        raise ValueError(f"{name}: no sample count in the run's efficiency record, cannot size a noise tolerance")
    z = NOISE_Z * 2 ** 0.5  # the difference of two independent evaluations
    if percent_sum:
        # A sum of per-category accuracies: at p ~ 0.5 its relative standard error is about 1/sqrt(n).
        return max(fixed, z * abs(value) / n ** 0.5)
    p = min(max(float(value), 0.05), 0.95)
    return max(fixed, z * (p * (1 - p) / n) ** 0.5)


def is_accuracy(name: str) -> bool:
    """Metrics that are proportions of the eval set answered right (or MME's sums of them): as the benchmark
    registrations say (tasks/benchmarks.py Metric.kind), and for a metric none names, by lmms-eval's naming."""
    from modbench.tasks.benchmarks import PERCENT_SUM, SHARE, metric_kind

    kind = metric_kind(name)
    if kind is not None:
        return kind in (SHARE, PERCENT_SUM)
    return name == "exact_match" or name.endswith(("accuracy", "_acc"))


def checks_for_run(run_id: str, run: dict, policy: str = "fixed") -> list[Check]:
    """The checks a baseline keeps for one run: every numeric metric, TFLOPs and skip ratio."""
    if policy not in TOLERANCE_POLICIES:
        raise ValueError(f"tolerance policy must be one of {TOLERANCE_POLICIES}, got {policy!r}")
    skip_tolerance = SKIP_TOLERANCE if policy == "fixed" else NOISE_SKIP_TOLERANCE
    out = []
    for task, metrics in sorted(run["metrics"].items()):
        for name, entry in sorted(metrics.items()):
            value = entry["value"]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if policy == "noise" and not is_accuracy(name):
                    continue
                tolerance = accuracy_tolerance(value, name, task_samples(run, task), policy)
                out.append(Check(run_id, f"metrics.{task}.{name}.value", value, "higher", tolerance))
            elif isinstance(value, str):
                out.append(Check(run_id, f"metrics.{task}.{name}.value", value, "equal", 0.0))
    eff = run.get("efficiency") or {}
    if "tflops_analytic" in eff:
        out.append(Check(run_id, "efficiency.tflops_analytic", eff["tflops_analytic"], "lower", FLOPS_TOLERANCE))
    if "overall_skip" in eff:
        out.append(Check(run_id, "efficiency.overall_skip", eff["overall_skip"], "equal", skip_tolerance))
    for task, per in sorted(eff.get("per_task", {}).items()):
        out.append(Check(run_id, f"efficiency.per_task.{task}.overall_skip", per["overall_skip"], "equal",
                         skip_tolerance))
    return out


def compare(check: Check, current, device_name: str) -> Finding:
    if current is None:
        return Finding(check, None, "fail", "metric missing from the run")
    if isinstance(check.value, str) or isinstance(current, str):
        ok = current == check.value
        return Finding(check, current, "pass" if ok else "fail", "" if ok else f"was {check.value!r}")
    base = float(check.value)
    if check.direction == "higher":
        ok = current >= base - check.tolerance
        reason = f"dropped {base - current:.4g} (tolerance {check.tolerance})"
    elif check.direction == "lower":
        ok = current <= base * (1 + check.tolerance) + 1e-12
        reason = f"rose from {base:.6g} to {current:.6g}"
    elif check.direction == "lower_noisy":
        if check.device_name != device_name:
            return Finding(check, current, "skipped", f"other hardware ({device_name} vs {check.device_name})")
        ok = current <= base + check.tolerance
        reason = f"slower by {current - base:.4g} s (noise threshold {check.tolerance:.4g})"
    else:
        ok = abs(current - base) <= check.tolerance
        reason = f"moved {current - base:+.4g} (tolerance {check.tolerance})"
    return Finding(check, current, "pass" if ok else "fail", "" if ok else reason)


def load_baseline(path: str | Path) -> dict:
    return load_results(path)


# What decides the floats a CPU run computes, besides code and inputs: a trained model's numbers are only
# expected to match a baseline computed with the same (suite.reproduce.CPU_ISAS).
NUMERICS_KEYS = ("torch", "cpu", "cpu_id", "cpu_capability", "cpu_isa_pins", "num_threads")


def numerics(env: dict) -> dict:
    return {k: env.get(k) for k in NUMERICS_KEYS}


def numerics_difference(baseline: dict, env: dict) -> str:
    """How a run's numerics differ from those of the baseline's runs ('' when equal or unknown)."""
    theirs = baseline.get("provenance", {}).get("runs_numerics")
    if not theirs:
        return ""
    ours = numerics(env)
    # a key the baseline's runs did not record (cpu_id, added later) says nothing about them
    diff = [f"{k} {ours[k]!r} vs {theirs[k]!r}" for k in NUMERICS_KEYS if k in theirs and ours[k] != theirs[k]]
    return "; ".join(diff)


def run_checks(runs_dir: str | Path, baseline_path: str | Path) -> list[Finding]:
    baseline = load_baseline(baseline_path)
    findings = []
    for raw in baseline["checks"]:
        check = Check(**raw)
        path = Path(runs_dir) / check.run_id / "run.json"
        if not path.exists():
            findings.append(Finding(check, None, "fail", f"run {check.run_id} missing from {runs_dir}"))
            continue
        run = load_results(path)
        if run["status"] != "ok":
            findings.append(Finding(check, None, "fail", f"run {check.run_id} failed: {run['errors'][:1]}"))
            continue
        finding = compare(check, _get(run, check.metric), run["environment"]["device_name"])
        other = numerics_difference(baseline, run["environment"]) if finding.status == "fail" else ""
        if other:  # a failure then says so: another machine's rounding trains another model
            finding.reason += f" [computed with other numerics than the baseline's runs: {other}]"
        findings.append(finding)
    return findings


def update_baseline(runs_dir: str | Path, baseline_path: str | Path, run_ids: list[str] | None = None,
                    policy: str = "fixed") -> Path:
    checks, runs_numerics = [], None
    for path in sorted(Path(runs_dir).glob("*/run.json")):
        if run_ids and path.parent.name not in run_ids:
            continue
        run = load_results(path)
        runs_numerics = runs_numerics or numerics(run["environment"])
        if run["status"] != "ok":
            raise ValueError(f"{path}: refusing to baseline a failed run")
        checks += checks_for_run(path.parent.name, run, policy)
    if not checks:
        raise ValueError(f"{runs_dir}: no finished runs to baseline")
    env = environment()
    data = {"schema_version": SCHEMA_VERSION, "kind": "baseline",
            "provenance": {"git": env["git"], "environment": env,
                           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "runs_dir": str(runs_dir), "tolerance_policy": policy,
                           "runs_numerics": runs_numerics},
            "checks": [asdict(c) for c in checks]}
    return write_json_atomic(baseline_path, data)


def moved(finding: Finding) -> bool:
    """A passing numeric check whose value is not the baseline's: within its tolerance, yet a change (a retrained
    model with the baseline's numerics computes the same floats, so any move there is the code's doing)."""
    value, current = finding.check.value, finding.current
    if finding.status != "pass" or isinstance(value, str) or not isinstance(current, (int, float)):
        return False
    if finding.check.direction == "lower_noisy":  # a timing: it moves every run
        return False
    return abs(float(current) - float(value)) > 1e-9 * max(1.0, abs(float(value)))


def report(findings: list[Finding]) -> tuple[str, bool]:
    """One line per failed, skipped or moved check, then the counts; ok when nothing failed."""
    failed = [f for f in findings if f.status == "fail"]
    lines = [f"{f.status.upper():7s} {f.check.run_id} {f.check.metric}: {f.reason}" for f in findings
             if f.status != "pass"]
    shifted = [f for f in findings if moved(f)]
    lines += [f"MOVED   {f.check.run_id} {f.check.metric}: {float(f.check.value):.6g} -> {float(f.current):.6g} "
              f"(within tolerance {f.check.tolerance:.4g})" for f in shifted]
    lines.append(f"{sum(f.status == 'pass' for f in findings)} passed, {len(failed)} failed, "
                 f"{sum(f.status == 'skipped' for f in findings)} skipped; {len(shifted)} of the passed moved "
                 "within their tolerance")
    return "\n".join(lines), not failed


def recompute_metrics(run_dir: str | Path) -> dict:
    """Re-aggregate every task's metrics from samples.jsonl with the task's own aggregation functions."""
    from modbench.tasks.registry import load_tasks

    samples: dict[str, list[dict]] = {}
    for line in (Path(run_dir) / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        samples.setdefault(row["task"], []).append(row)
    spec = json.loads((Path(run_dir) / "run.json").read_text())["spec"]
    flat = {}
    for name, task in load_tasks(list(samples), spec.get("data_root", "")).items():
        if name not in samples:
            continue
        aggregations = task.aggregation()
        flat[name] = {metric: fn([row[metric] for row in samples[name]]) for metric, fn in aggregations.items()
                      if all(metric in row for row in samples[name])}
    return flat
