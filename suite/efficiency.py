"""Efficiency of a run from the plugin's per-sample records: sequence length, skip ratios, TFLOPs, timing.

The tables' TFLOPs column is computed as the papers did, at the run's average per-layer token counts (prefill),
so it reflects the sequence lengths and skip ratios actually measured: each layer's FLOPs at its mean count, from
the polynomial counted on the real decoder layers on the meta device (models/flops.py; it equals the papers'
formula). The field keeps its name, `tflops_analytic`, so that older records and baselines read alike.
"""

from __future__ import annotations

import statistics

import torch

from modbench.models.flops import CONVENTION, flops_for_tokens
from modbench.models.routing import TOKEN_TYPE_NAMES
from modbench.suite.routing_stats import routing_summary


def _counts(record: dict, key: str) -> torch.Tensor:
    per_type = record[key]
    layers = len(next(iter(per_type.values())))
    out = torch.zeros(layers, len(TOKEN_TYPE_NAMES), dtype=torch.float64)
    for t, name in enumerate(TOKEN_TYPE_NAMES):
        if name in per_type:
            out[:, t] = torch.tensor(per_type[name], dtype=torch.float64)
    return out


def efficiency_from_records(cfg, records: list[dict], per_task: bool = True) -> dict:
    """`cfg`: the ModelConfig that produced the records (the plugin's records.model.json)."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return {}
    summary = _summarise(cfg, ok)
    if per_task:
        tasks = sorted({r["task"] for r in ok})
        summary["per_task"] = {task: {k: v for k, v in _summarise(cfg, [r for r in ok if r["task"] == task]).items()
                                      if k in ("n_samples", "avg_prompt_tokens", "tflops_analytic", "overall_skip")}
                               for task in tasks}
    return summary


def _summarise(cfg, ok: list[dict]) -> dict:
    kept = sum(_counts(r, "kept_per_layer") for r in ok)
    seen = sum(_counts(r, "seen_per_layer") for r in ok)
    # Prefill tokens only: response tokens are decode steps, which the papers' TFLOPs leave out.
    prefill_kept = kept.clone()
    prefill_seen = seen.clone()
    response = TOKEN_TYPE_NAMES.index("response")
    prefill_kept[:, response] = 0
    prefill_seen[:, response] = 0
    mean_tokens = (prefill_kept.sum(dim=1) / len(ok)).tolist()
    return {
        "n_samples": len(ok),
        "avg_prompt_tokens": statistics.fmean(r["prompt_tokens"] for r in ok),
        "avg_image_tokens": statistics.fmean(r["image_tokens"] for r in ok),
        "avg_generated_tokens": statistics.fmean(r["generated_tokens"] for r in ok),
        "overall_skip": routing_summary(prefill_kept, prefill_seen, cfg)["overall_skip"],
        "routing_prefill": routing_summary(prefill_kept, prefill_seen, cfg),
        "routing_all_tokens": routing_summary(kept, seen, cfg),
        "tflops_analytic": flops_for_tokens(cfg, mean_tokens)["tflops"],
        "tflops_dense_equivalent": flops_for_tokens(cfg, (prefill_seen.sum(dim=1) / len(ok)).tolist())["tflops"],
        "flops_convention": f"{CONVENTION}; at the run's mean per-layer tokens",
        **_measured(ok),
        "prefill_seconds_mean_batch": statistics.fmean(r["prefill_seconds_batch"] for r in ok),
        "decode_seconds_mean_batch": statistics.fmean(r["decode_seconds_batch"] for r in ok),
    }



def _measured(ok: list[dict]) -> dict:
    """Means of the per-sample measured FLOPs, when the run measured them (measure_flops)."""
    measured = [r["flops"] for r in ok if "flops" in r]
    if not measured:
        return {}
    keys = ("tflops_total_measured", "tflops_llm_measured", "tflops_llm_analytic", "tflops_llm_fvcore")
    return {f"{k}_mean": statistics.fmean(m[k] for m in measured) for k in keys if all(k in m for m in measured)}
