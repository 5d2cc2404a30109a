"""The routing-policy interface the decoder loop asks, layer by layer, which tokens run.

A scheme (dense, gamma, pmod) is an nn.Module holding its router parameters; `route()` returns None for a
layer where every real token runs (a dense layer) or a `Route` naming the tokens that run. Its static methods
answer what the rest of the code asks about a scheme without building it: its MoD layers and per-layer token
counts (models/flops.py, suite/routing_stats.py) and how the authors' checkpoints hold it (models/checkpoints.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .config import ModelConfig, ModSpec

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
    # On the meta device (models/flops.py counts FLOPs there): every row keeps this many tokens, which `keep`,
    # having no values, cannot tell; the loop then takes no data-dependent step. Unused on a real device.
    kept_per_row: int | None = None


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

    # --- configuration-level questions (no module built); a scheme overrides those it differs in ------------
    routes_decode_tokens = False  # whether a decode step asks the routers (FLOPs count it)

    @staticmethod
    def mod_layers_of(spec: ModSpec, num_layers: int) -> list[int]:
        return sorted(spec.layers)

    @staticmethod
    def tokens_per_layer(cfg: ModelConfig, seq_len: float, skip: float | None = None,
                         image_tokens: int | None = None) -> list[float]:
        """Tokens each layer runs in a prefill of `seq_len` tokens (`image_tokens` of them image tokens); `skip`,
        the share of tokens an MoD layer skips, replaces the scheme's own rule (a dense model has none to skip)."""
        return [float(seq_len)] * cfg.llm.num_layers

    # --- training a dense model into this scheme (`modbench train --scheme`) --------------------------------
    own_schedule: str | None = None  # how it picks its MoD layers when converting a model none are given for

    @staticmethod
    def training_spec(layers: list[int], skip_fraction: float, shared_router: bool, masked: str,
                      ratios: list[float]) -> ModSpec:
        """The ModSpec a dense model is converted to, from the training options this scheme reads."""
        from .config import ConfigError

        raise ConfigError("a model is not converted to dense: train the dense model itself")

    # --- the authors' checkpoint layout ---------------------------------------------------------------------
    @staticmethod
    def spec_from_config_json(conf: dict, num_layers: int, where: Path) -> ModSpec:
        return ModSpec()

    @staticmethod
    def config_json_fields(cfg: ModelConfig) -> dict:
        return {}

    @staticmethod
    def check_checkpoint(conf: dict, cfg: ModelConfig, keys, where: Path) -> None:
        """Raise if the weights' routers (`keys`, the authors' names) do not fit the config."""

    @staticmethod
    def routers_from_authors(state: dict, cfg: ModelConfig, where: Path) -> dict:
        """Take the routers out of `state` (the authors' names; scheme-specific layer keys renamed in place to a
        plain layer's) and return them under ours."""
        return {}

    @staticmethod
    def routers_to_authors(theirs: dict, model) -> None:
        """Add the routers to `theirs` (the authors' names), renaming the MoD layers' keys where they differ."""


_SCHEMES: dict[str, Callable[[ModelConfig], RoutingScheme]] = {}


def register_scheme(name: str):
    def wrap(cls):
        _SCHEMES[name] = cls
        return cls

    return wrap


register_scheme("dense")(RoutingScheme)


def scheme_class(name: str) -> type[RoutingScheme]:
    # Import the scheme modules here so that they register themselves (one mechanism, no hand-kept map).
    from . import gamma_mod, pmod  # noqa: F401

    return _SCHEMES[name]


def build_routing(cfg: ModelConfig) -> RoutingScheme:
    return scheme_class(cfg.mod.scheme)(cfg)


def uniform_skip_tokens(num_layers: int, mod_layers: set[int], seq_len: float, skip: float) -> list[float]:
    """Tokens per layer when every MoD layer skips the share `skip` of the tokens (FLOPs at a given skip)."""
    if not 0.0 <= skip < 1.0:
        raise ValueError(f"skip = {skip} is outside [0, 1)")
    return [seq_len * (1 - skip) if i in mod_layers else float(seq_len) for i in range(num_layers)]


def rank_within_rows(score: torch.Tensor, descending: bool) -> torch.Tensor:
    """rank[b, s] = position of score[b, s] in row b's (stable) sort order."""
    order = torch.sort(score, dim=1, descending=descending, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return rank
