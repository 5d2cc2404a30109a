"""Wall-clock, memory and KV-cache profiling of one model at fixed shapes.

Timing: warm-up runs, then repeated runs; CUDA events with synchronisation on GPU, perf_counter on CPU;
median / p10 / p90 per phase: vision encode, prefill (time to first token), per-token decode, end to end.
The output length is forced (no early EOS), so an MoD model cannot look faster by answering shorter.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from models.routing import IMAGE, QUESTION, RESPONSE, SYSTEM, TOKEN_TYPE_NAMES
from suite.flops import flops_for_tokens
from suite.routing_stats import routing_summary

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


class Clock:
    """Times a block on the model's device: CUDA events (after synchronising) or perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    @contextmanager
    def time(self, out: list[float]):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / 1000.0)
        else:
            start = time.perf_counter()
            yield
            out.append(time.perf_counter() - start)


def peak_memory_bytes(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"kind": "cuda_max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process_peak_rss", "bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


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


@torch.no_grad()
def measure_latency(model, spec: LatencySpec, image=None) -> dict:
    """One model, fixed shapes. Returns timings, memory, KV cache and the prefill's routing statistics."""
    device = model.device
    clock = Clock(device)
    lm = model.language_model
    embeds, token_types = synthetic_batch(model, spec)
    pixels = None
    if model.vision is not None and image is not None:
        pixels = model.vision.preprocess([image] * spec.batch_size).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {"vision_encode": [], "prefill": [], "decode_per_token": [], "end_to_end": []}
    cache = prefill_out = None
    for run in range(spec.warmup + spec.repeats):
        record = run >= spec.warmup
        vision_t, prefill_t, decode_t = [], [], []
        if pixels is not None:
            with clock.time(vision_t):
                model.vision.encode(pixels)
        cache = lm.new_cache(spec.batch_size, device)
        with clock.time(prefill_t):
            prefill_out = lm(inputs_embeds=embeds, token_types=token_types, cache=cache, logits_to_keep=1,
                             collect_stats=True)
            token = prefill_out.logits[:, -1].argmax(dim=-1)
        step_types = torch.full((spec.batch_size, 1), RESPONSE, device=device)
        for _ in range(spec.new_tokens - 1):  # the first new token came from the prefill
            with clock.time(decode_t):
                out = lm(inputs_embeds=lm.model.embed_tokens(token)[:, None], token_types=step_types,
                         cache=cache, logits_to_keep=1)
                token = out.logits[:, -1].argmax(dim=-1)
        if record:
            times["vision_encode"] += vision_t
            times["prefill"] += prefill_t
            times["decode_per_token"] += decode_t
            times["end_to_end"].append(sum(vision_t) + sum(prefill_t) + sum(decode_t))
    summary = {name: quantiles(values) for name, values in times.items() if values}
    e2e = summary["end_to_end"]["median"]
    kept = prefill_out.kept.sum(dim=0)  # [layers, types]
    total = prefill_out.total.sum(dim=0)
    layer_bytes = cache.layer_bytes()
    entries = cache.layer_lengths().sum(dim=1).tolist()
    dense_entries = int(total[0].sum()) + spec.batch_size * (spec.new_tokens - 1)
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
        "seconds": summary,
        "samples_per_s": spec.batch_size / e2e if e2e > 0 else None,
        "peak_memory": peak_memory_bytes(device),
        "kv_cache": {
            "bytes_per_layer": layer_bytes,
            "entries_per_layer": entries,
            "share_of_dense": sum(entries) / (dense_entries * cfg.llm.num_layers),
            "prefill_share_of_dense_by_type": per_type_share,
        },
        "routing": routing_summary(kept, total, cfg),
        "flops_analytic": flops_for_tokens(cfg, (kept.sum(dim=1).double() / spec.batch_size).tolist()),
    }
