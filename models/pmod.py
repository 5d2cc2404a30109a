"""p-MoD: per-layer routers over vision tokens, a weight norm (TanhNorm), STRing and progressive ratio decay.

Behaviour follows ../shared/reference/README.md ("p-MoD, as the authors' code behaves") and the released
code (MCG-NJU/p-MoD llava/model/language_model/pmod_llava_llama.py: build_mod_layers, ModLayer, TokenRouter,
shifted_cos_with_ratio / shifted_linear_with_ratio):
- router per MoD layer Linear(hidden, 1, bias=mod_bias_enabled), zero-initialised (mod_special_init), on the
  layer input (no norm);
- weight w = scale * norm(r) + bias, norm one of softmax (over the row) / sigmoid / tanh / none; released
  tanh_0.2_1 (TanhNorm: w = 0.2 * tanh(r) + 1), computed in the model's dtype as the release does;
- routed ("target") tokens: the image tokens (vision_all; vision_hr leaves LLaVA-NeXT's base view dense);
  k = trunc(n_target * ratio) computed in float32 (the release multiplies an int32 count by a Python float);
- which k run: "released" ranking takes the top k of w over the whole row, where the non-target positions
  were set to -inf before the norm (so text gets w = norm(-inf), 0.8 for TanhNorm, and ties with a router
  saturated negative: it can take a slot, and fewer vision tokens run); "vision_only" takes the top k of r
  over the target tokens. Ties go to the earlier position (the release's torch.topk leaves their order to
  the kernel). Pads never compete (the release evaluates batch 1, without pads);
- STRing: a kept target token gives h + w * MLP(norm(h)), a skipped one w * x; other tokens run a plain
  dense layer; RoPE positions are the original ones;
- decode tokens are text, so they run densely.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import (
    PMOD_DECAYS,
    PMOD_PATTERNS,
    PMOD_RANKINGS,
    PMOD_TARGET_TOKENS,
    PMOD_WEIGHT_NORMS,
    ConfigError,
    ModelConfig,
    ModSpec,
    validate_resolved,
)
from .hosts import CheckpointError, host_family
from .routing import (
    IMAGE,
    Route,
    RoutingContext,
    RoutingScheme,
    rank_within_rows,
    register_scheme,
    uniform_skip_tokens,
)

# The released decay functions divide by 31 whatever the depth (a 32-layer LLM's last index).
AUTHORS_DECAY_DIVISOR = 31


def decay_value(pattern: str, factor: float, layer: int, divisor: int) -> float:
    """The authors' decay functions, in their operation order (so the floats are the same)."""
    if pattern == "shiftedcos":
        return math.cos(layer * math.pi / divisor) / 2 + factor
    if pattern == "shiftedlinear":
        return (-layer / divisor + 0.5) + factor
    raise ConfigError(f"mod.pmod_pattern {pattern!r} is not a decay pattern ({PMOD_DECAYS})")


def pattern_schedule(spec: ModSpec, num_layers: int, divisor: int | None = None) -> tuple[list[int], list[float]]:
    """(MoD layers, kept ratios) that spec's pattern gives at this depth. divisor: None for the spec's own
    (pmod_decay_divisor, else num_layers - 1)."""
    if spec.pmod_pattern in PMOD_DECAYS:
        if divisor is None:
            divisor = spec.pmod_decay_divisor or max(num_layers - 1, 1)
        layers, ratios = [], []
        for layer in range(num_layers):
            value = decay_value(spec.pmod_pattern, spec.pmod_router_factor, layer, divisor)
            if value <= spec.prd_max_ratio:
                layers.append(layer)
                ratios.append(max(value, spec.prd_min_ratio))
        return layers, ratios
    layers = {"deep_all": list(range(2, num_layers - 1)),  # the last layer stays dense
              "deep_all_include_last": list(range(2, num_layers)),
              "interleave": list(range(1, num_layers, 2))}[spec.pmod_pattern]
    return layers, [spec.pmod_router_factor] * len(layers)


def authors_schedule(spec: ModSpec, num_layers: int) -> tuple[list[int], list[float]]:
    """What the released code builds from the pattern fields alone (decay divisor fixed at 31)."""
    return pattern_schedule(spec, num_layers, divisor=AUTHORS_DECAY_DIVISOR)


def prd_schedule(num_layers: int, max_ratio: float = 0.85, min_ratio: float = 0.15) -> tuple[list[int], list[float]]:
    """Progressive ratio decay over any depth: R(l) = cos(l * pi / (L - 1)) / 2 + 0.5 (at 32 layers the
    released schedule: layers 8-31)."""
    return pattern_schedule(ModSpec(scheme="pmod", prd_max_ratio=max_ratio, prd_min_ratio=min_ratio), num_layers)


def pmod_layers_and_ratios(spec: ModSpec, num_layers: int) -> tuple[list[int], list[float]]:
    """The explicit layers (ratios, or pmod_router_factor each), else the pattern's schedule."""
    if not spec.layers and not spec.ratios:
        return pattern_schedule(spec, num_layers)
    ratios = list(spec.ratios) if spec.ratios else [spec.pmod_router_factor] * len(spec.layers)
    return list(spec.layers), ratios


def mean_kept_ratio(spec: ModSpec, num_layers: int) -> float:
    """Mean over all layers of the kept share of vision tokens (dense layers keep 1): p-MoD's KV-cache share."""
    layers, ratios = pmod_layers_and_ratios(spec, num_layers)
    kept = dict(zip(layers, ratios))
    return sum(kept.get(layer, 1.0) for layer in range(num_layers)) / num_layers


def kept_count(n: torch.Tensor | int, ratio: float) -> torch.Tensor | int:
    """trunc(n * ratio) in float32, as the release computes it (int32 count times a Python float: a float32
    product); float64 flooring differs for a few n (e.g. 2365 on the 32-layer schedule)."""
    if isinstance(n, torch.Tensor):
        product = n.to(torch.float32) * torch.tensor(ratio, dtype=torch.float32, device=n.device)
        return torch.trunc(product).long()
    return int(np.trunc(np.float32(n) * np.float32(ratio)))


# --- the spec's checks (RoutingScheme.check_spec: run where a config is resolved or built) -------------------
# The ModSpec fields p-MoD's routing reads (config.SCHEME_FIELDS; another scheme's are refused on a p-MoD spec).
PMOD_SPEC_FIELDS = frozenset({"layers", "ratios", "pmod_pattern", "pmod_decay_divisor", "prd_max_ratio",
                              "prd_min_ratio", "pmod_router_factor", "pmod_weight_norm", "pmod_norm_scale",
                              "pmod_norm_bias", "pmod_target_tokens", "pmod_router_bias", "pmod_router_zero_init",
                              "pmod_ranking"})


def check_spec(mod: ModSpec, num_layers: int) -> None:
    """A p-MoD spec's own checks; each error names the field."""
    if mod.ratios and len(mod.ratios) != len(mod.layers):
        raise ConfigError(f"mod.ratios has {len(mod.ratios)} entries but mod.layers has {len(mod.layers)}")
    if not 0.0 < mod.prd_min_ratio <= mod.prd_max_ratio <= 1.0:
        raise ConfigError("mod.prd_min_ratio / mod.prd_max_ratio must satisfy 0 < min <= max <= 1")
    for name, allowed in (("pmod_pattern", PMOD_PATTERNS), ("pmod_weight_norm", PMOD_WEIGHT_NORMS),
                          ("pmod_target_tokens", PMOD_TARGET_TOKENS), ("pmod_ranking", PMOD_RANKINGS)):
        if getattr(mod, name) not in allowed:
            raise ConfigError(f"mod.{name} must be one of {allowed}, got {getattr(mod, name)!r}")
    if mod.pmod_decay_divisor is not None and (isinstance(mod.pmod_decay_divisor, bool)
                                               or not isinstance(mod.pmod_decay_divisor, int)
                                               or mod.pmod_decay_divisor < 1):
        raise ConfigError(f"mod.pmod_decay_divisor must be None or an integer >= 1, got {mod.pmod_decay_divisor!r}")
    if not 0.0 < mod.pmod_router_factor <= 1.0:
        raise ConfigError(f"mod.pmod_router_factor = {mod.pmod_router_factor} is outside (0, 1]")
    # scale 0 would make every weight equal (and "none" of a masked -inf undefined): refused
    if not 0.0 < mod.pmod_norm_scale < math.inf:
        raise ConfigError(f"mod.pmod_norm_scale = {mod.pmod_norm_scale} must be positive and finite")
    if not math.isfinite(mod.pmod_norm_bias):
        raise ConfigError(f"mod.pmod_norm_bias = {mod.pmod_norm_bias} must be finite")
    for name in ("pmod_router_bias", "pmod_router_zero_init"):
        if not isinstance(getattr(mod, name), bool):
            raise ConfigError(f"mod.{name} must be true or false, got {getattr(mod, name)!r}")


# --- config.json fields (the release's strings) <-> the typed spec -----------------------------------------
_DECAY_RE = re.compile(r"(\w+?)_decay_(\d+\.\d+)_(\d+\.\d+)")
# the release's pattern: "{norm}_{scale}_{bias}", or the bare norm name (scale 1, bias 1)
_NORM_RE = re.compile(r"([a-z]+)_(\d+\.\d+|\d+)_(-?\d+\.\d+|-?\d+)")


def parse_target_layers(value) -> dict:
    """mod_target_layers -> ModSpec fields. Unknown patterns are an error naming the field."""
    if isinstance(value, str):
        if value in PMOD_PATTERNS and value not in PMOD_DECAYS:
            return {"pmod_pattern": value}
        match = _DECAY_RE.fullmatch(value)
        if match and match.group(1) in PMOD_DECAYS:
            return {"pmod_pattern": match.group(1), "prd_max_ratio": float(match.group(2)),
                    "prd_min_ratio": float(match.group(3))}
    decays = " | ".join(f"{d}_decay_{{max}}_{{min}}" for d in PMOD_DECAYS)
    raise ConfigError(f"mod_target_layers: unknown value {value!r}; expected {decays} or one of "
                      f"{[p for p in PMOD_PATTERNS if p not in PMOD_DECAYS]}")


def format_target_layers(spec: ModSpec) -> str:
    if spec.pmod_pattern in PMOD_DECAYS:
        return f"{spec.pmod_pattern}_decay_{_decimal(spec.prd_max_ratio)}_{_decimal(spec.prd_min_ratio)}"
    return spec.pmod_pattern


def parse_weight_norm(value) -> dict:
    """mod_weight_norm -> ModSpec fields. Unknown norms are an error naming the field."""
    if isinstance(value, str):
        match = _NORM_RE.fullmatch(value)
        norm, scale, bias = (match.group(1), float(match.group(2)), float(match.group(3))) if match else (value, 1.0, 1.0)
        if norm in PMOD_WEIGHT_NORMS:
            return {"pmod_weight_norm": norm, "pmod_norm_scale": scale, "pmod_norm_bias": bias}
    raise ConfigError(f"mod_weight_norm: unknown value {value!r}; expected {{norm}}_{{scale}}_{{bias}} or {{norm}} "
                      f"with norm one of {PMOD_WEIGHT_NORMS}")


def format_weight_norm(spec: ModSpec) -> str:
    return f"{spec.pmod_weight_norm}_{_number(spec.pmod_norm_scale)}_{_number(spec.pmod_norm_bias)}"


def _decimal(x: float) -> str:
    """A float the release's `\\d+\\.\\d+` accepts, exactly (0.85 -> "0.85", 1 -> "1.0")."""
    return np.format_float_positional(float(x), trim="0")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else _decimal(x)


# --- config.json <-> ModSpec, as the release reads and writes it ----------------------------------------------
# p-MoD's config.json fields, as initialize_mod_modules writes them (pmod_llava_llama.py); its build_mod_layers
# adds mod_target_layer_indices. mod_layers_idx / mod_ratios are ours: an explicit schedule that these fields
# cannot express (a decay at another divisor than the release's 31, custom ratios).
PMOD_CONFIG_KEYS = ("mod_target_layers", "mod_target_token_type", "mod_router_factor", "mod_weight_norm",
                    "mod_bias_enabled", "mod_special_init")
PMOD_EXPLICIT_KEYS = ("mod_layers_idx", "mod_ratios")


def _without_schedule(conf: dict) -> bool:
    """Written by this suite before it wrote the p-MoD fields: its p-MoD models used the depth-scaled decay."""
    return not any(key in conf for key in PMOD_CONFIG_KEYS + PMOD_EXPLICIT_KEYS)


def spec_from_config_json(conf: dict, num_layers: int, where: Path) -> ModSpec:
    """Every p-MoD field of config.json into the typed spec, with the layers and ratios resolved: the explicit
    keys when present, else what the release builds from the pattern (decay divisor 31). Loading checks that
    the routers in the weights sit at exactly those layers (`check_routers`)."""
    if _without_schedule(conf):
        layers, ratios = prd_schedule(num_layers)
        return ModSpec(scheme="pmod", layers=layers, ratios=ratios)
    missing = [key for key in PMOD_CONFIG_KEYS if key not in conf]
    if missing:
        raise CheckpointError(f"{where}: pmod_llava_llama config without {missing}")
    try:
        fields = {**parse_target_layers(conf["mod_target_layers"]), **parse_weight_norm(conf["mod_weight_norm"])}
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    token_type = conf["mod_target_token_type"]
    if token_type not in PMOD_TARGET_TOKENS:
        raise CheckpointError(f"{where}: mod_target_token_type: unsupported value {token_type!r}; supported: "
                              f"{PMOD_TARGET_TOKENS}")
    factor = conf["mod_router_factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise CheckpointError(f"{where}: mod_router_factor must be a number, got {factor!r}")
    for key in ("mod_bias_enabled", "mod_special_init"):
        if not isinstance(conf[key], bool):
            raise CheckpointError(f"{where}: {key} must be true or false, got {conf[key]!r}")
    spec = ModSpec(scheme="pmod", pmod_router_factor=float(factor), pmod_target_tokens=token_type,
                   pmod_router_bias=conf["mod_bias_enabled"], pmod_router_zero_init=conf["mod_special_init"], **fields)
    if any(key in conf for key in PMOD_EXPLICIT_KEYS):
        layers, ratios = conf.get("mod_layers_idx"), conf.get("mod_ratios")
        if not (isinstance(layers, list) and isinstance(ratios, list) and len(layers) == len(ratios)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in layers)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ratios)):
            raise CheckpointError(f"{where}: mod_layers_idx / mod_ratios must be lists of layer indices and kept "
                                  f"ratios of the same length, got {layers!r} / {ratios!r}")
        ratios = [float(v) for v in ratios]
    else:
        layers, ratios = authors_schedule(spec, num_layers)
        indices = conf.get("mod_target_layer_indices")
        if indices is not None and list(indices) != layers:
            raise CheckpointError(f"{where}: mod_target_layer_indices {indices} differs from the layers that "
                                  f"mod_target_layers {conf['mod_target_layers']!r} gives at {num_layers} layers "
                                  f"({layers})")
    spec.layers, spec.ratios = list(layers), ratios
    try:  # here, so that the error names the file
        check_spec(spec, num_layers)
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    return spec


def check_routers(conf: dict, cfg: ModelConfig, keys, where: Path) -> None:
    """The p-MoD routers in the weights sit at exactly the MoD layers config.json's schedule gives."""
    routers = sorted(int(k.split(".")[2]) for k in keys if k.endswith(".router.router.weight"))
    layers = sorted(cfg.mod.layers)
    if routers == layers:
        return
    if _without_schedule(conf):
        raise CheckpointError(f"{where}: no mod_target_layers / mod_ratios, and the routers (layers {routers}) "
                              f"are not the default schedule's ({layers}): their ratios are unknown")
    raise CheckpointError(f"{where}: routers at layers {routers} but config.json's schedule has MoD layers {layers}")


def config_json_fields(cfg: ModelConfig) -> dict:
    """config.json's p-MoD fields as the release writes them; the explicit schedule too when those fields
    (read as the release reads them) would not rebuild this model's layers and ratios."""
    spec = cfg.mod
    layers, ratios = pmod_layers_and_ratios(spec, cfg.llm.num_layers)
    out = {"mod_target_layers": format_target_layers(spec), "mod_target_token_type": spec.pmod_target_tokens,
           "mod_router_factor": spec.pmod_router_factor, "mod_weight_norm": format_weight_norm(spec),
           "mod_bias_enabled": spec.pmod_router_bias, "mod_special_init": spec.pmod_router_zero_init}
    if (layers, ratios) == authors_schedule(spec, cfg.llm.num_layers):
        out["mod_target_layer_indices"] = layers
    else:
        out["mod_layers_idx"], out["mod_ratios"] = layers, ratios
    return out


# --- the routing scheme --------------------------------------------------------------------------------------
def unrouted_base_view(cfg: ModelConfig) -> int:
    """Image tokens p-MoD never routes: with target "vision_hr", the base view's (the first of each image;
    LLaVA-NeXT has one), which run every layer; else none."""
    if cfg.mod.pmod_target_tokens != "vision_hr" or cfg.vision is None:
        return 0
    validate_resolved(cfg)
    return host_family(cfg.family).base_view_tokens(cfg.vision)


class PmodRouter(nn.Module):
    """TokenRouter: Linear(hidden, 1, bias), zero-initialised when mod_special_init (as released)."""

    def __init__(self, hidden_size: int, bias: bool = True, zero_init: bool = True) -> None:
        super().__init__()
        self.router = nn.Linear(hidden_size, 1, bias=bias)
        if zero_init:
            nn.init.zeros_(self.router.weight)
            if bias:
                nn.init.zeros_(self.router.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.router(hidden).squeeze(-1)


@register_scheme("pmod")
class PmodRouting(RoutingScheme):
    def __init__(self, cfg: ModelConfig) -> None:
        nn.Module.__init__(self)
        spec = cfg.mod
        layers, ratios = pmod_layers_and_ratios(spec, cfg.llm.num_layers)
        self.mod_layers = tuple(layers)
        self.ratios = dict(zip(layers, ratios))
        self.spec = spec
        self.base_view_tokens = unrouted_base_view(cfg)
        self.routers = nn.ModuleDict({
            str(layer): PmodRouter(cfg.llm.hidden_size, spec.pmod_router_bias, spec.pmod_router_zero_init)
            for layer in layers})

    def router_for(self, layer_idx: int) -> PmodRouter:
        return self.routers[str(layer_idx)]

    # --- the configuration it reads (config.SCHEME_FIELDS; checked by routing.validate_for_scheme) -------------
    title = "p-MoD"
    spec_fields = PMOD_SPEC_FIELDS
    check_spec = staticmethod(check_spec)

    # --- configuration-level questions (no module built) -----------------------------------------------------
    @staticmethod
    def mod_layers_of(spec: ModSpec, num_layers: int) -> list[int]:
        return pmod_layers_and_ratios(spec, num_layers)[0]

    own_schedule = "progressive ratio decay"  # unless layers (and their kept ratios) are given

    @staticmethod
    def training_spec(layers: list[int], skip_fraction: float, shared_router: bool, masked: str,
                      ratios: list[float]) -> ModSpec:
        if len(ratios) == 1:
            ratios = ratios * len(layers)
        if ratios and len(ratios) != len(layers):
            raise ConfigError(f"{len(ratios)} kept ratios for {len(layers)} MoD layers")
        return ModSpec(scheme="pmod", layers=layers, ratios=ratios)

    @staticmethod
    def tokens_per_layer(cfg: ModelConfig, seq_len: float, skip: float | None = None,
                         image_tokens: int | None = None) -> list[float]:
        """The text tokens plus trunc(n_routed * ratio_l) of the routed vision tokens in MoD layer l (float32, as
        the release computes it; with target "vision_hr" a base view's tokens are not routed, and run every
        layer); `skip` instead skips that share of every token in the MoD layers."""
        num_layers = cfg.llm.num_layers
        layers, ratios = pmod_layers_and_ratios(cfg.mod, num_layers)
        if skip is not None:
            return uniform_skip_tokens(num_layers, set(layers), seq_len, skip)
        n_vision = image_tokens if image_tokens is not None else cfg.num_image_tokens
        if n_vision > seq_len:
            raise ValueError(f"seq_len {seq_len:g} is shorter than the {n_vision} image tokens (give a longer "
                             "sequence, or the image tokens it holds)")
        routed = max(n_vision - unrouted_base_view(cfg), 0)
        kept = dict(zip(layers, ratios))
        return [seq_len - routed + kept_count(routed, kept[i]) if i in kept else float(seq_len)
                for i in range(num_layers)]

    # --- the authors' checkpoint layout (MCG-NJU/p-MoD pmod_llava_llama.py) ------------------------------------
    spec_from_config_json = staticmethod(spec_from_config_json)
    config_json_fields = staticmethod(config_json_fields)
    check_checkpoint = staticmethod(check_routers)

    @staticmethod
    def routers_from_authors(state: dict, cfg: ModelConfig, where: Path) -> dict:
        """The routers (model.layers.{i}.router.router.*) taken out of `state` and returned under our names; an
        MoD layer's own keys (model.layers.{i}.decoder_layer.*) renamed in place to a plain layer's."""
        routing = {}
        for key in [k for k in state if ".router.router." in k]:
            layer = key.split(".")[2]
            routing[f"language_model.model.routing.routers.{layer}.router.{key.rsplit('.', 1)[1]}"] = state.pop(key)
        for key in [k for k in state if ".decoder_layer." in k]:
            state[key.replace(".decoder_layer.", ".")] = state.pop(key)
        return routing

    @staticmethod
    def routers_to_authors(theirs: dict, model) -> None:
        routing = model.language_model.model.routing
        for layer in routing.mod_layers:
            for key in [k for k in theirs if k.startswith(f"model.layers.{layer}.")]:
                theirs[key.replace(f"model.layers.{layer}.", f"model.layers.{layer}.decoder_layer.")] = theirs.pop(key)
            router = routing.routers[str(layer)].router
            theirs[f"model.layers.{layer}.router.router.weight"] = router.weight.detach().clone()
            if router.bias is not None:  # mod_bias_enabled
                theirs[f"model.layers.{layer}.router.router.bias"] = router.bias.detach().clone()

    def targets(self, ctx: RoutingContext) -> torch.Tensor:
        target = ctx.token_types == IMAGE
        if self.base_view_tokens:
            target = target & (target.long().cumsum(dim=1) > self.base_view_tokens)
        return target

    def weight(self, masked: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """w = scale * norm(r) + bias on the logits with non-targets at -inf (in the logits' dtype)."""
        norm = self.spec.pmod_weight_norm
        if norm == "softmax":  # a row without targets would be all -inf (NaN): its weights are never used
            x = torch.softmax(torch.where(target.any(dim=1, keepdim=True), masked, torch.zeros_like(masked)), dim=1)
        elif norm == "sigmoid":
            x = torch.sigmoid(masked)
        elif norm == "tanh":
            x = torch.tanh(masked)
        else:  # "none"
            x = masked
        return x * self.spec.pmod_norm_scale + self.spec.pmod_norm_bias

    def route(self, layer_idx, hidden, normed, ctx: RoutingContext) -> Route | None:
        if layer_idx not in self.ratios:
            return None
        target = self.targets(ctx) & ctx.real
        if not bool(target.any()):
            return None  # decode steps and text-only prompts: a dense layer
        r = self.routers[str(layer_idx)](hidden)
        masked = r.masked_fill(~target, -torch.inf)
        weight = self.weight(masked, target)
        n_keep = kept_count(target.sum(dim=1), self.ratios[layer_idx])
        if self.spec.pmod_ranking == "released":
            score = weight.float()
        else:
            score = r.float().masked_fill(~target, -torch.inf)
        score = score.masked_fill(~ctx.real, -torch.inf)
        top = rank_within_rows(score, descending=True) < n_keep[:, None]
        keep = ctx.real & (~target | top)
        scale = torch.where(target, weight, torch.ones_like(weight)).to(hidden.dtype)
        return Route(keep=keep, mlp_scale=scale, skip_scale=scale, compact_positions=False)

