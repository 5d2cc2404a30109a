"""`modbench smoke`: forward + greedy generation on tiny variants (or any named models), one results file."""

from __future__ import annotations

import time


def run_smoke(names: list[str] | None = None, seed: int = 0, max_new_tokens: int = 4,
              output: str = "results/runs/smoke.json", log=None) -> tuple[str, list[str]]:
    """Each model (default: every tiny variant) resolved and built, run forward and generating on three drawn
    samples; a model that raises or gives non-finite logits is recorded as failed, never skipped. Returns the
    results file's path and the failed names."""
    import functools

    import torch

    from modbench import models
    from modbench.models.prompt import vicuna_v1
    from modbench.models.resolver import build, resolve
    from modbench.suite.results import results_record, write_json_atomic
    from modbench.tasks.fixtures import sample_prompts

    log = log or functools.partial(print, flush=True)
    names = names or [c.name for c in models.list_variants() if c.tiny]
    samples = sample_prompts()
    prompts = [vicuna_v1(q) for q, _ in samples]
    images = [image for _, image in samples]
    records, failed = [], []
    for name in names:
        start = time.perf_counter()
        try:
            model = build(resolve(name), seed=seed)
            with torch.no_grad():
                forward = model(prompts, images, collect_stats=True)
            out = model.generate(prompts, images, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 collect_stats=True)
            kept = out["kept"].sum(dim=(0, 2)).float()
            total = out["total"].sum(dim=(0, 2)).float()
            record = {
                "model": name, "status": "ok", "scheme": model.cfg.mod.scheme,
                "prompt_tokens": out["prompt_lengths"], "generated_tokens": [len(t) for t in out["tokens"]],
                "forward_logits_finite": bool(torch.isfinite(forward.logits).all()),
                "kept_ratio_per_layer": [round(v, 4) for v in (kept / total).tolist()],
                "kv_entries_per_layer": out["cache"].layer_lengths().sum(dim=1).tolist(),
                "seconds": round(time.perf_counter() - start, 3),
            }
            if not record["forward_logits_finite"]:
                raise FloatingPointError("non-finite logits")
        except Exception as exc:  # recorded, reported, and the command exits non-zero
            record = {"model": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        records.append(record)
        log(f"{name:28s} {record['status']:6s} "
            + (f"kept/layer={record['kept_ratio_per_layer']}" if record["status"] == "ok" else record["error"]))
    spec = {"command": "smoke", "models": names, "seed": seed, "max_new_tokens": max_new_tokens,
            "dtype": "float32", "attn_implementation": "sdpa", "device": "cpu"}
    return str(write_json_atomic(output, results_record("smoke", spec, runs=records, failed=failed))), failed
