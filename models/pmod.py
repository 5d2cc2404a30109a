"""p-MoD: per-layer routers over vision tokens, TanhNorm, STRing and progressive ratio decay.

Behaviour follows ../shared/reference/README.md ("p-MoD, as the authors' code behaves"):
- router per MoD layer Linear(hidden, 1, bias=True), zero-initialised, on the layer input (no norm);
- TanhNorm w = scale * tanh(r) + 1 (scale 0.2);
- only vision tokens are routed: the top k = trunc(n_vision * ratio) by r run the layer, ties broken by
  position (a zero router keeps the first k);
- STRing: a kept vision token gives h + w * MLP(norm(h)), a skipped one w * x; text tokens run a plain dense
  layer; RoPE positions are the original ones;
- decode tokens are text, so they run densely.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig, ModSpec
from .routing import IMAGE, Route, RoutingContext, RoutingScheme, rank_within_rows, register_scheme


def prd_schedule(num_layers: int, max_ratio: float = 0.85, min_ratio: float = 0.15) -> tuple[list[int], list[float]]:
    """Progressive ratio decay: R(l) = cos(l * pi / (L - 1)) / 2 + 0.5; layer l is MoD iff R(l) <= max_ratio,
    keeping max(R(l), min_ratio) of its vision tokens. Returns (mod layers, kept ratios)."""
    layers, ratios = [], []
    for layer in range(num_layers):
        r = math.cos(layer * math.pi / max(num_layers - 1, 1)) / 2 + 0.5
        if r <= max_ratio:
            layers.append(layer)
            ratios.append(max(r, min_ratio))
    return layers, ratios


def pmod_layers_and_ratios(spec: ModSpec, num_layers: int) -> tuple[list[int], list[float]]:
    """The configured layers/ratios, or the PRD schedule when the spec leaves both empty."""
    if not spec.layers and not spec.ratios:
        return prd_schedule(num_layers, spec.prd_max_ratio, spec.prd_min_ratio)
    ratios = list(spec.ratios) if spec.ratios else [0.5] * len(spec.layers)
    return list(spec.layers), ratios


def mean_kept_ratio(spec: ModSpec, num_layers: int) -> float:
    """Mean over all layers of the kept share of vision tokens (dense layers keep 1): p-MoD's KV-cache share."""
    layers, ratios = pmod_layers_and_ratios(spec, num_layers)
    kept = dict(zip(layers, ratios))
    return sum(kept.get(layer, 1.0) for layer in range(num_layers)) / num_layers


class PmodRouter(nn.Module):
    """Linear(hidden, 1, bias) with zero init, as released."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.router = nn.Linear(hidden_size, 1, bias=True)
        nn.init.zeros_(self.router.weight)
        nn.init.zeros_(self.router.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.router(hidden).squeeze(-1)


@register_scheme("pmod")
class PmodRouting(RoutingScheme):
    def __init__(self, cfg: ModelConfig) -> None:
        nn.Module.__init__(self)
        layers, ratios = pmod_layers_and_ratios(cfg.mod, cfg.llm.num_layers)
        self.mod_layers = tuple(layers)
        self.ratios = dict(zip(layers, ratios))
        self.scale = cfg.mod.tanh_norm_scale
        self.routers = nn.ModuleDict({str(layer): PmodRouter(cfg.llm.hidden_size) for layer in layers})

    def route(self, layer_idx, hidden, normed, ctx: RoutingContext) -> Route | None:
        if layer_idx not in self.ratios:
            return None
        vision = (ctx.token_types == IMAGE)
        if not bool(vision.any()):
            return None  # decode steps and text-only prompts: a dense layer
        r = self.routers[str(layer_idx)](hidden).float()
        weight = self.scale * torch.tanh(r) + 1.0
        n_keep = (vision.sum(dim=1).double() * self.ratios[layer_idx]).floor().long()
        score = torch.where(vision, r, torch.full_like(r, -torch.inf))
        keep_vision = vision & (rank_within_rows(score, descending=True) < n_keep[:, None])
        keep = ctx.real & (~vision | keep_vision)
        ones = torch.ones_like(weight)
        scale = torch.where(vision, weight, ones).to(hidden.dtype)
        return Route(keep=keep, mlp_scale=scale, skip_scale=scale, compact_positions=False)
