"""Wall-clock, memory and KV-cache profiling of one model at fixed shapes.

Timing: warm-up runs, then repeated runs of the real generation loop (models.core.greedy_generate, the one
the lmms-eval plugin runs), each step timed through its clock hook: CUDA events with synchronisation on GPU,
perf_counter on CPU; median / p10 / p90 per phase: vision encode, prefill (time to first token), per-token
decode, end to end.
The output length is forced (no early EOS), so an MoD model cannot look faster by answering shorter.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch

from modbench.models.core import StepClock, greedy_generate
from modbench.models.flops import flops_for_tokens
from modbench.models.routing import IMAGE, QUESTION, SYSTEM, TOKEN_TYPE_NAMES
from modbench.suite.results import peak_memory_bytes
from modbench.suite.routing_stats import routing_summary

SYSTEM_TOKENS = 35  # the vicuna_v1 system prompt of the LLaVA-HR scripts, before the image


@dataclass
class LatencySpec:
    image_tokens: int = 1024
    prompt_tokens: int = 60  # text tokens: up to SYSTEM_TOKENS before the image, the rest after it
    new_tokens: int = 8
    batch_size: int = 1
    warmup: int = 1
    repeats: int = 5
    seed: int = 0


def quantiles(values: list[float]) -> dict:
    """median, p10, p90 (linear interpolation), mean, n."""
    ordered = sorted(values)

    def q(frac: float) -> float:
        pos = frac * (len(ordered) - 1)
        lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {"median": statistics.median(ordered), "p10": q(0.1), "p90": q(0.9),
            "mean": statistics.fmean(ordered), "n": len(ordered)}


def synthetic_batch(model, spec: LatencySpec):
    """Embeddings and token types of the LLaVA-HR layout: system text, image, question; random but seeded."""
    hidden = model.cfg.llm.hidden_size
    system = min(SYSTEM_TOKENS, spec.prompt_tokens // 2)
    question = spec.prompt_tokens - system
    types = [SYSTEM] * system + [IMAGE] * spec.image_tokens + [QUESTION] * question
    gen = torch.Generator().manual_seed(spec.seed)
    embed = model.language_model.model.embed_tokens
    ids = torch.randint(5, embed.num_embeddings, (spec.batch_size, len(types)), generator=gen)
    embeds = embed(ids.to(model.device))
    image = torch.tensor(types, device=model.device) == IMAGE
    scale = embed.weight.detach().float().std().item()
    noise = torch.randn(spec.batch_size, len(types), hidden, generator=gen).to(model.device, model.dtype) * scale
    embeds = torch.where(image[None, :, None], noise, embeds)
    token_types = torch.tensor(types, device=model.device).expand(spec.batch_size, -1).contiguous()
    return embeds.detach(), token_types


@dataclass
class TimedInput:
    """One batch to time: embeddings and token types ready for the decoder, and the pixels whose vision
    encoding is timed separately (None: no image)."""

    inputs_embeds: torch.Tensor
    token_types: torch.Tensor
    pixels: object = None


def task_inputs(model, task: str, limit: int, batch_size: int = 1, data_root: str = "") -> list[TimedInput]:
    """The first `limit` samples of a local task (of a group such as pope_local: its first member task), prompted
    as the plugin prompts them, in batches."""
    from modbench.models.prompt import task_sample
    from modbench.tasks.registry import check_data, load_tasks

    check_data([task], data_root)
    leaf = next(iter(load_tasks([task], data_root).values()))
    docs = list(leaf.test_docs() if leaf.has_test_docs() else leaf.validation_docs())[:limit]
    if not docs:
        raise ValueError(f"--task {task}: no samples")
    # prompted and imaged as the plugin does it (models.prompt.task_sample)
    samples = [task_sample(leaf.doc_to_text(doc), leaf.doc_to_visual(doc), f"{task} doc {i}")
               for i, doc in enumerate(docs)]
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        prompts, images = [p for p, _ in chunk], [i for _, i in chunk]
        with torch.no_grad():
            batch = model.build_batch(prompts, images)
        with_image = [i for i in images if i is not None]
        pixels = model.vision.preprocess(with_image).to(model.device) if with_image and model.vision else None
        out.append(TimedInput(batch.inputs_embeds, batch.token_types, pixels))
    return out




@torch.no_grad()
def measure_latency(model, spec: LatencySpec, image=None, inputs: list[TimedInput] | None = None) -> dict:
    """One model: synthetic fixed shapes (spec), or real task samples (inputs). Returns timings, memory,
    KV cache and the prefill's routing statistics."""
    if spec.new_tokens < 1:
        raise ValueError(f"new_tokens must be at least 1 (the prefill's token), got {spec.new_tokens}")
    device = model.device
    clock = StepClock(device)
    lm = model.language_model
    if inputs is None:
        embeds, token_types = synthetic_batch(model, spec)
        pixels = None
        if model.vision is not None and image is not None:
            pixels = model.vision.preprocess([image] * spec.batch_size).to(device)
        inputs = [TimedInput(embeds, token_types, pixels)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {"vision_encode": [], "prefill": [], "decode_per_token": [], "end_to_end": []}
    kept = total = None
    entries, dense_entries, layer_bytes, samples = None, 0, None, 0
    tokenizer = model.tokenizer
    for run in range(spec.warmup + spec.repeats):
        record = run >= spec.warmup
        last = run == spec.warmup + spec.repeats - 1
        for item in inputs:
            batch = item.inputs_embeds.shape[0]
            vision_t = []
            if item.pixels is not None:
                with clock.time(vision_t):
                    model.vision.encode(item.pixels)
            # the real generation loop, its output length forced (no early EOS), each step timed by the clock
            out = greedy_generate(lm, item.inputs_embeds, item.token_types, max_new_tokens=spec.new_tokens,
                                  min_new_tokens=spec.new_tokens, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                  else tokenizer.eos_token_id, collect_stats=True, clock=clock)
            prefill_t, decode_t = out["step_seconds"][:1], out["step_seconds"][1:]
            if record:
                times["vision_encode"] += vision_t
                times["prefill"] += prefill_t
                times["decode_per_token"] += decode_t
                times["end_to_end"].append(sum(vision_t) + sum(prefill_t) + sum(decode_t))
            if last:  # routing and cache statistics of one pass over the inputs
                cache = out["cache"]
                k, t = out["prefill_kept"].sum(dim=0), out["prefill_total"].sum(dim=0)
                kept, total = (k, t) if kept is None else (kept + k, total + t)
                e = cache.layer_lengths().sum(dim=1)
                entries = e if entries is None else entries + e
                b = torch.tensor(cache.layer_bytes(), dtype=torch.float64)
                layer_bytes = b if layer_bytes is None else layer_bytes + b
                dense_entries += int(t[0].sum()) + batch * (spec.new_tokens - 1)
                samples += batch
    spec.batch_size = inputs[0].inputs_embeds.shape[0]
    summary = {name: quantiles(values) for name, values in times.items() if values}
    e2e = summary["end_to_end"]["median"]
    entries = entries.tolist()
    per_type_share = {
        TOKEN_TYPE_NAMES[t]: float(kept[:, t].sum() / total[:, t].sum()) for t in (SYSTEM, IMAGE, QUESTION)
        if total[:, t].sum() > 0
    }
    cfg = model.cfg
    return {
        "spec": asdict(spec),
        "device": str(device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "attn_implementation": cfg.attn_implementation,
        "timer": "cuda_events" if clock.cuda else "perf_counter",
        "loop": "modbench.models.core.greedy_generate",
        "seconds": summary,
        # each timed pass over each input, in order (repeat-major): what the quantiles and a paired comparison of
        # two models on the same inputs are computed from
        "end_to_end_each": times["end_to_end"],
        "samples_per_s": (samples / len(inputs)) / e2e if e2e > 0 else None,
        "n_inputs": len(inputs),
        "peak_memory": peak_memory_bytes(device),
        "kv_cache": {
            "bytes_per_layer": (layer_bytes / len(inputs)).tolist(),  # mean over the inputs
            "entries_per_layer": entries,
            "share_of_dense": sum(entries) / (dense_entries * cfg.llm.num_layers),
            "prefill_share_of_dense_by_type": per_type_share,
        },
        "routing": routing_summary(kept, total, cfg),
        "flops_analytic": flops_for_tokens(cfg, (kept.sum(dim=1).double() / samples).tolist()),
    }


def latency_table(names: list[str], batch_sizes: list[int], spec: LatencySpec, device: str | None = None,
                  dtype: str | None = None, attn_implementation: str | None = None, task: str | None = None,
                  limit: int = 8, data_root: str = "") -> dict:
    """`modbench latency`: each model (a variant or a checkpoint directory, resolved with the dtype and attention
    overrides) at each batch size, on fixed shapes or a task's first samples; one row per (model, batch) and, for
    two models, the second's time and FLOPs ratios to the first's. Returns {spec, runs, table, comparisons}."""
    from dataclasses import replace

    from modbench.models.resolver import build, resolve
    from modbench.tasks.fixtures import sample_prompts

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    image = sample_prompts()[0][1]
    rows, runs = [], []
    for batch in batch_sizes:
        for name in names:
            model = build(resolve(name, {"dtype": dtype, "attn_implementation": attn_implementation}),
                          seed=spec.seed, device=device)
            inputs = task_inputs(model, task, limit, batch, data_root) if task else None
            result = measure_latency(model, replace(spec, batch_size=batch), image=image, inputs=inputs)
            result["model"] = name
            runs.append(result)
            sec = result["seconds"]
            rows.append({
                "model": name, "batch": batch,
                "prefill_ms": 1e3 * sec["prefill"]["median"],
                "prefill_p10-p90": f"{1e3 * sec['prefill']['p10']:.1f}-{1e3 * sec['prefill']['p90']:.1f}",
                "decode_ms/token": 1e3 * sec["decode_per_token"]["median"] if "decode_per_token" in sec else None,
                "e2e_ms": 1e3 * sec["end_to_end"]["median"],
                "samples/s": result["samples_per_s"],
                "TFLOPs(prefill)": result["flops_analytic"]["tflops"],
                "skip": result["routing"]["overall_skip"],
                "kv_share": result["kv_cache"]["share_of_dense"],
            })
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    comparisons = []
    if len(names) == 2:
        for batch in batch_sizes:
            a, b = [r for r in rows if r["batch"] == batch]
            comparisons.append({
                "batch": batch, "models": [a["model"], b["model"]],
                "prefill_time_ratio": b["prefill_ms"] / a["prefill_ms"],
                "e2e_time_ratio": b["e2e_ms"] / a["e2e_ms"],
                "flops_ratio": b["TFLOPs(prefill)"] / a["TFLOPs(prefill)"],
            })
    run_spec = {"command": "latency", "models": names, "batch_sizes": batch_sizes, "device": device,
                "dtype": dtype or "variant default", "attn_implementation": attn_implementation or "variant default",
                "image_tokens": spec.image_tokens, "prompt_tokens": spec.prompt_tokens, "new_tokens": spec.new_tokens,
                "task": task, "limit": limit if task else None, "warmup": spec.warmup, "repeats": spec.repeats,
                "seed": spec.seed}
    return {"spec": run_spec, "runs": runs, "table": rows, "comparisons": comparisons}
