"""Analytic FLOPs in the papers' convention.

2 FLOPs per multiply-add, LLM decoder only, prefill only. Per layer with s tokens, hidden h, MLP width I:
8*s*h^2 (q, k, v, o projections) + 4*s^2*h (scores and weighted sum) + 6*s*h*I (gate, up, down).
An MoD layer counts the tokens it runs: s*(1-R) for γ-MoD at skip ratio R; for p-MoD the text tokens plus
trunc(n_vision * ratio_l). Vision encoder, projector, lm_head, router and decode steps are not counted.
"""

from __future__ import annotations

import math

from models.config import ModelConfig
from models.pmod import pmod_layers_and_ratios

CONVENTION = "2 FLOPs per multiply-add; LLM decoder prefill only (8sh^2 + 4s^2h + 6shI per layer)"


def layer_flops(tokens: float, hidden: int, mlp: int) -> float:
    return 8 * tokens * hidden**2 + 4 * tokens**2 * hidden + 6 * tokens * hidden * mlp


def tokens_per_layer(cfg: ModelConfig, seq_len: float, skip: float | None = None,
                     image_tokens: int | None = None) -> list[float]:
    """Tokens each layer runs. `skip` (share of tokens an MoD layer skips) overrides the scheme's own rule."""
    num_layers = cfg.llm.num_layers
    mod = cfg.mod
    if mod.scheme == "dense":
        return [float(seq_len)] * num_layers
    if mod.scheme == "pmod" and skip is None:
        layers, ratios = pmod_layers_and_ratios(mod, num_layers)
        n_vision = image_tokens if image_tokens is not None else cfg.vision.num_image_tokens
        kept = dict(zip(layers, ratios))
        return [seq_len - n_vision + math.floor(n_vision * kept[i]) if i in kept else float(seq_len)
                for i in range(num_layers)]
    if skip is None:
        raise ValueError(f"--skip is required for a {mod.scheme} model (its skip ratio is measured, not fixed)")
    if not 0.0 <= skip < 1.0:
        raise ValueError(f"skip = {skip} is outside [0, 1)")
    mod_layers = set(mod.layers) if mod.scheme == "gamma" else set(pmod_layers_and_ratios(mod, num_layers)[0])
    return [seq_len * (1 - skip) if i in mod_layers else float(seq_len) for i in range(num_layers)]


def flops_analytic(cfg: ModelConfig, seq_len: float, skip: float | None = None,
                   image_tokens: int | None = None) -> dict:
    tokens = tokens_per_layer(cfg, seq_len, skip, image_tokens)
    per_layer = [layer_flops(t, cfg.llm.hidden_size, cfg.llm.intermediate_size) for t in tokens]
    return {
        "model": cfg.name,
        "convention": CONVENTION,
        "seq_len": seq_len,
        "skip": skip,
        "tokens_per_layer": tokens,
        "flops_per_layer": per_layer,
        "tflops": sum(per_layer) / 1e12,
    }
