"""The routing-policy interface the decoder loop asks, layer by layer, which tokens run.

A scheme (dense, gamma, pmod) is an nn.Module holding its router parameters; `route()` returns None for a
layer where every real token runs (a dense layer) or a `Route` naming the tokens that run. Its static methods
answer what the rest of the code asks about a scheme without building it: its MoD layers and per-layer token
counts (models/flops.py, suite/routing_stats.py), how the authors' checkpoints hold it (models/checkpoints.py), and
which ModSpec fields it reads and their checks (`spec_fields`, `check_spec`; `validate_for_scheme`, run with the
host family's checks wherever a config is resolved or built: config.validate_resolved).

Adding a scheme: a RoutingScheme subclass registered with `register_scheme(name)`, in a module `scheme_class`
imports (the built-in ones, config.SCHEMES), or from elsewhere (`registered_scheme`, as
tests/test_scheme_checks.py does for a toy scheme): a config may then name it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from . import config
from .config import SCHEME_FIELDS, SCHEMES, ConfigError, ModelConfig, ModSpec

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

    # --- the configuration it reads, checked where a config is resolved or built (validate_for_scheme) ---------
    title = "dense"  # how messages name its models
    # the ModSpec fields (of config.SCHEME_FIELDS) its routing reads: a spec setting another is refused
    spec_fields: frozenset[str] = frozenset()

    @staticmethod
    def check_spec(mod: ModSpec, num_layers: int) -> None:
        """Raise a ConfigError naming the field when `mod` (of a model of `num_layers` layers) is not a spec this
        scheme can run: the ranges and relations of the fields it reads. What needs no scheme (layer indices in
        range, kept ratios in (0, 1]) config.validate has checked; a field it does not read,
        validate_for_scheme refuses."""

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


_SCHEMES: dict[str, type[RoutingScheme]] = {}


def register_scheme(name: str):
    """Class decorator: the routing scheme a config names `name`. The built-in ones (config.SCHEMES) register as
    their modules are imported; another name (a scheme defined elsewhere) becomes one a config may name, until
    `unregister_scheme`."""
    def wrap(cls):
        if name not in SCHEMES:
            if name in scheme_classes():
                raise ValueError(f"routing scheme {name!r} is already registered")
            config._ADDED_SCHEMES.append(name)
        _SCHEMES[name] = cls
        return cls

    return wrap


def unregister_scheme(name: str) -> None:
    if name in SCHEMES:
        raise ValueError(f"routing scheme {name!r} is built in")
    del _SCHEMES[name]
    config._ADDED_SCHEMES.remove(name)


@contextmanager
def registered_scheme(name: str, cls: type[RoutingScheme]) -> Iterator[type[RoutingScheme]]:
    """`cls` registered as `name` for the duration of a `with` block (tests: nothing outlives them)."""
    register_scheme(name)(cls)
    try:
        yield cls
    finally:
        unregister_scheme(name)


@register_scheme("dense")
class DenseRouting(RoutingScheme):
    """Every layer runs every token: no router, and a spec naming MoD layers is refused."""

    @staticmethod
    def check_spec(mod: ModSpec, num_layers: int) -> None:
        if mod.layers:
            raise ConfigError(f"mod.layers must be empty when mod.scheme is {mod.scheme!r}")


def scheme_classes() -> dict[str, type[RoutingScheme]]:
    """Every scheme: the built-in ones (their modules imported on first use) and the registered ones."""
    # Import the scheme modules here so that they register themselves (one mechanism, no hand-kept map).
    from . import gamma_mod, pmod  # noqa: F401

    return dict(_SCHEMES)


def scheme_class(name: str) -> type[RoutingScheme]:
    schemes = scheme_classes()
    if name not in schemes:
        raise ConfigError(f"mod.scheme: unknown routing scheme {name!r}; known: {sorted(schemes)}")
    return schemes[name]


def validate_for_scheme(cfg: ModelConfig) -> ModelConfig:
    """`cfg.mod` checked against its routing scheme: the scheme's own checks (RoutingScheme.check_spec), and the spec
    sets only the fields the scheme reads (config.SCHEME_FIELDS; moving a spec to another scheme must not silently
    drop the first scheme's settings). Run, with the host family's checks, wherever a config is resolved or built
    (config.validate_resolved); `ModelConfig` itself checks what needs no scheme (config.validate)."""
    mod = cfg.mod
    scheme = scheme_class(mod.scheme)
    scheme.check_spec(mod, cfg.llm.num_layers)
    default = ModSpec()
    for name in SCHEME_FIELDS:
        if name not in scheme.spec_fields and getattr(mod, name) != getattr(default, name):
            readers = {key: cls for key, cls in scheme_classes().items() if name in cls.spec_fields}
            if not readers:
                raise ConfigError(f"mod.{name} is set, but no routing scheme reads it")
            titles = " and ".join(dict.fromkeys(cls.title for cls in readers.values()))
            names = ", ".join(repr(key) for key in readers)
            raise ConfigError(f"mod.{name} applies to {titles} models (scheme{'s' if len(readers) > 1 else ''} "
                              f"{names}), not {mod.scheme!r}, whose routing does not read it")
    return cfg


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
