"""The routing-policy interface the decoder loop asks, layer by layer, which tokens run.

A scheme (dense, gamma, pmod) is an nn.Module holding its router parameters; `route()` returns None for a
layer where every real token runs (a dense layer) or a `Route` naming the tokens that run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .config import ModelConfig

# Token types, one per position; the host model assigns them when it builds the prompt.
PAD, SYSTEM, IMAGE, QUESTION, RESPONSE = 0, 1, 2, 3, 4
TOKEN_TYPE_NAMES = ("pad", "system", "image", "question", "response")


@dataclass
class RoutingContext:
    """What a policy may look at besides the hidden states of one forward chunk."""

    token_types: torch.Tensor  # [B, S] long, one of PAD..RESPONSE
    training: bool

    @property
    def real(self) -> torch.Tensor:
        return self.token_types != PAD


@dataclass
class Route:
    """One layer's routing decision for one forward chunk."""

    keep: torch.Tensor  # [B, S] bool: tokens that run attention + MLP (pads are dropped by the core)
    mlp_scale: torch.Tensor | None = None  # [B, S]: the MLP branch of a kept token is scaled by this
    skip_scale: torch.Tensor | None = None  # [B, S]: a skipped token's hidden state is scaled by this
    compact_positions: bool = False  # RoPE positions count only the tokens this layer has kept
    aux_loss: torch.Tensor | None = None  # the routing loss of this layer (already weighted)


class RoutingScheme(nn.Module):
    """Base: a dense model; subclasses override `route` for their MoD layers."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.mod_layers: tuple[int, ...] = tuple(sorted(cfg.mod.layers))

    def route(
        self, layer_idx: int, hidden: torch.Tensor, normed: torch.Tensor, ctx: RoutingContext
    ) -> Route | None:
        return None

    def check_generation(self, num_layers: int) -> None:
        """Raise if this scheme cannot generate with a KV cache in this configuration."""


_SCHEMES: dict[str, Callable[[ModelConfig], RoutingScheme]] = {}


def register_scheme(name: str):
    def wrap(cls):
        _SCHEMES[name] = cls
        return cls

    return wrap


register_scheme("dense")(RoutingScheme)


def build_routing(cfg: ModelConfig) -> RoutingScheme:
    # Import the scheme modules here so that they register themselves (one mechanism, no hand-kept map).
    from . import gamma_mod, pmod  # noqa: F401

    return _SCHEMES[cfg.mod.scheme](cfg)


def rank_within_rows(score: torch.Tensor, descending: bool) -> torch.Tensor:
    """rank[b, s] = position of score[b, s] in row b's (stable) sort order."""
    order = torch.sort(score, dim=1, descending=descending, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return rank
