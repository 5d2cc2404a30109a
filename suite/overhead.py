"""`modbench overhead`: what the suite's own loop costs per sample, beside the bare model call.

The same samples run twice: through lmms-eval's `simple_evaluate` with our plugin (task building, request
construction, prompting, answer post-processing, metrics, logging, our per-sample records), and as bare
`ModVlm.generate` calls replaying exactly the batches the plugin made. Each is timed at two sample counts,
n/4 and n; the steady-state cost per sample is the slope between them, so per-run fixed costs (building the
task, reading the parquet, aggregating) drop out, as they would over a benchmark of thousands of samples.
Everything runs in one process, warmed up, repeated; medians are reported. Each repeat's slopes are paired (its
bare replay follows its suite runs), so the shares are computed per repeat and given as median and range: on a
2-core machine whose speed drifts, two medians taken apart differ by ±10 percentage points, more than the
overhead itself. The
in-run share (wall time outside the model calls, in the same runs) has no such cross-run noise.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass


@dataclass
class OverheadSpec:
    model: str = "cpu-llava-hr"
    task: str = "gqa_local"
    limit: int = 16
    batch_size: int = 4
    repeats: int = 5
    protocol: str = "llava"
    data_root: str = ""
    seed: int = 0


def measure_overhead(spec: OverheadSpec, progress=print) -> dict:
    from modbench.tasks.registry import check_data, defer_unused_lmms_eval_imports, task_manager

    defer_unused_lmms_eval_imports()
    from lmms_eval.evaluator import simple_evaluate

    from modbench.models.lmms_plugin import ModbenchLmms

    if spec.limit < 2:
        raise ValueError("--limit must be at least 2 (the slope needs two sample counts)")
    small, full = max(1, spec.limit // 4), spec.limit
    check_data([spec.task], spec.data_root)
    plugin = ModbenchLmms(pretrained=spec.model, protocol=spec.protocol, batch_size=spec.batch_size,
                          seed=spec.seed)
    model = plugin.model
    generate = model.generate
    calls: list[tuple[list, list, dict]] = []
    inside: list[float] = []

    def recorded_generate(prompts, images, **kwargs):
        calls.append((list(prompts), list(images), dict(kwargs)))
        start = time.perf_counter()
        try:
            return generate(prompts, images, **kwargs)
        finally:
            inside.append(time.perf_counter() - start)

    model.generate = recorded_generate
    manager = task_manager(spec.data_root)

    def through_suite(n: int) -> tuple[float, float, list]:
        calls.clear()
        inside.clear()
        plugin.model = model  # lmms-eval's evaluate() ends with lm.clean(), which drops the model attribute
        start = time.perf_counter()
        simple_evaluate(model=plugin, tasks=[spec.task], limit=n, batch_size=spec.batch_size, task_manager=manager,
                        log_samples=True, verbosity="ERROR", random_seed=spec.seed, numpy_random_seed=spec.seed,
                        torch_random_seed=spec.seed)
        return time.perf_counter() - start, sum(inside), list(calls)

    def bare(replay: list) -> float:
        start = time.perf_counter()
        for prompts, images, kwargs in replay:
            generate(prompts, images, **kwargs)
        return time.perf_counter() - start

    through_suite(small)  # warm-up: imports, task build caches, first-call allocations
    suite_s = {small: [], full: []}
    inside_s = {small: [], full: []}
    bare_s = {small: [], full: []}
    replayed = {}
    for repeat in range(spec.repeats):
        for n in (small, full):
            wall, model_seconds, replay = through_suite(n)
            suite_s[n].append(wall)
            inside_s[n].append(model_seconds)
            bare_s[n].append(bare(replay))
            replayed[n] = sum(len(prompts) for prompts, _, _ in replay)
        progress(f"repeat {repeat + 1}/{spec.repeats}: suite {suite_s[full][-1]:.2f} s, bare {bare_s[full][-1]:.2f} s "
                 f"for {full} samples")
    model.generate = generate
    med = {name: {n: statistics.median(v) for n, v in series.items()}
           for name, series in (("suite", suite_s), ("inside", inside_s), ("bare", bare_s))}
    per_sample = {name: (m[full] - m[small]) / (full - small) for name, m in med.items()}
    shares = paired_shares(suite_s, bare_s, small, full)
    outside = paired_shares(suite_s, inside_s, small, full)
    return {
        "spec": asdict(spec),
        "samples": {"small": small, "full": full},
        "samples_replayed_bare": replayed,
        "seconds": {"suite": suite_s, "model_inside_suite": inside_s, "bare": bare_s},
        "per_sample_seconds": per_sample,
        # the share of a sample's steady-state wall time that is not the bare model call (median of the repeats)
        "overhead_share": _median(shares),
        "overhead_share_range": _range(shares),
        # the share spent outside the model calls within the same runs (the suite's own code, no cross-run noise)
        "outside_model_share": _median(outside),
        "outside_model_share_range": _range(outside),
        # repeats whose suite time did not grow from `small` to `full` samples (noise at a tiny --limit): no share
        "repeats_without_slope": spec.repeats - len(shares),
        "fixed_seconds_per_run": med["suite"][full] - per_sample["suite"] * full,
    }


def paired_shares(suite: dict, part: dict, small: int, full: int) -> list[float]:
    """Per repeat r: 1 - part's slope / the suite's slope, both from repeat r's own runs at `small` and `full`
    samples (the share of a sample's wall time not spent in `part`). A repeat whose suite slope is not positive
    has no share and is left out."""
    shares = []
    for r in range(len(suite[full])):
        slope = suite[full][r] - suite[small][r]
        if slope > 0:
            shares.append(1.0 - (part[full][r] - part[small][r]) / slope)
    return shares


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _range(values: list[float]) -> list[float]:
    return [min(values), max(values)] if values else [math.nan, math.nan]
