"""γ-MoD: one router shared by every MoD layer, masked routing learning, threshold routing at inference.

Behaviour follows ../shared/reference/README.md ("γ-MoD, as the authors' code behaves"):
- router Linear(hidden, 2, bias=False) on the layer's input RMSNorm output, one shared by every MoD layer (or,
  for γ-MoD Table 1's "not shared" ablation, one per MoD layer); keep probability p = softmax[..., 1];
- a kept token runs y = a + p * MLP(norm(a)) with a = x + Attn(norm(x)) among kept tokens, RoPE positions
  compacted to 0..k-1; a skipped token passes through untouched and leaves no K/V entry;
- training: only system + image tokens are routable (`masked_tokens` "qa"; "q" also routes answer tokens,
  "none" every token); `train_skip_fraction` of them (rounded down) are skipped per row, the lowest p first
  (top-k on p with +1 for force-kept tokens); routing loss = 2-class CE of the router logits against "kept",
  mean over real tokens, times router_loss_coef, summed over MoD layers;
- inference: prompt tokens run when p > prefill_threshold; response tokens (what a decode step processes) run
  when p >= decode_threshold. `fixed_skip` (a benchmark knob, off by default) replaces the prompt rule by the
  masked top-k of training at that skip share, for a controlled skip ratio.

Difference from the authors' code: they apply the prefill rule to a whole forward and the decode rule only in
their batch-1 decode branch. We choose the rule by token type instead, so a cached generation and an
uncached recomputation of the same tokens route identically, and batches of any size work.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import MASKED_TOKENS, ConfigError, ModelConfig, ModSpec
from .hosts import CheckpointError
from .routing import (
    IMAGE,
    RESPONSE,
    SYSTEM,
    Route,
    RoutingContext,
    RoutingScheme,
    rank_within_rows,
    register_scheme,
    uniform_skip_tokens,
)


class GammaModRouter(nn.Linear):
    """The shared router: Linear(hidden, 2, bias=False); class 1 means "run this token"."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size, 2, bias=False)


@register_scheme("gamma")
class GammaModRouting(RoutingScheme):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.spec = cfg.mod
        if cfg.mod.shared_router:
            self.router = GammaModRouter(cfg.llm.hidden_size)
        else:
            self.routers = nn.ModuleDict({str(layer): GammaModRouter(cfg.llm.hidden_size) for layer in self.mod_layers})

    def router_for(self, layer_idx: int) -> GammaModRouter:
        return self.router if self.spec.shared_router else self.routers[str(layer_idx)]

    def check_generation(self, num_layers: int) -> None:
        bad = [layer for layer in self.mod_layers if layer in (0, num_layers - 1)]
        if bad:
            raise ConfigError(
                f"mod.layers includes {bad}: γ-MoD keeps layer 0 and the last layer ({num_layers - 1}) dense "
                "when generating with a KV cache"
            )

    # --- the configuration it reads (config.SCHEME_FIELDS; checked by routing.validate_for_scheme) -------------
    title = "γ-MoD"
    spec_fields = frozenset({"layers", "train_skip_fraction", "prefill_threshold", "decode_threshold",
                             "router_loss_coef", "shared_router", "masked_tokens", "fixed_skip"})

    @staticmethod
    def check_spec(mod: ModSpec, num_layers: int) -> None:
        if mod.masked_tokens not in MASKED_TOKENS:
            raise ConfigError(f"mod.masked_tokens must be one of {MASKED_TOKENS}, got {mod.masked_tokens!r}")
        if mod.fixed_skip is not None and not 0.0 <= mod.fixed_skip < 1.0:
            raise ConfigError(f"mod.fixed_skip = {mod.fixed_skip} is outside [0, 1)")
        for name in ("train_skip_fraction", "prefill_threshold", "decode_threshold"):
            value = getattr(mod, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"mod.{name} = {value} is outside [0, 1)")

    # --- configuration-level questions (no module built) -----------------------------------------------------
    routes_decode_tokens = True  # every decode token asks the router (FLOPs count it)

    @staticmethod
    def training_spec(layers: list[int], skip_fraction: float, shared_router: bool, masked: str,
                      ratios: list[float]) -> ModSpec:
        if not layers:
            raise ConfigError("converting to γ-MoD needs its MoD layers (mod_layers, arank_keep or mod_pattern)")
        return ModSpec(scheme="gamma", layers=layers, train_skip_fraction=skip_fraction,
                       shared_router=shared_router, masked_tokens=masked)

    @staticmethod
    def tokens_per_layer(cfg: ModelConfig, seq_len: float, skip: float | None = None,
                         image_tokens: int | None = None) -> list[float]:
        if skip is None:
            raise ValueError(f"--skip is required for a {cfg.mod.scheme} model (its skip ratio is measured, not fixed)")
        return uniform_skip_tokens(cfg.llm.num_layers, set(cfg.mod.layers), seq_len, skip)

    # --- the authors' checkpoint layout (Yaxin9Luo/Gamma-MOD llava_llama_mod.py) -------------------------------
    @staticmethod
    def spec_from_config_json(conf: dict, num_layers: int, where: Path) -> ModSpec:
        spec = conf.get("mod")
        if not isinstance(spec, dict) or "mod_layers_idx" not in spec:
            raise CheckpointError(f"{where}: {conf.get('model_type')} without a 'mod' dict holding mod_layers_idx")
        # prefill / decode thresholds: not in the released configs (their code hard-codes 0.005 / 0.5); our
        # writer adds them so that checkpoints of other settings (the tiny twins) round-trip.
        # shared_router / masked_tokens: likewise ours (the released models share one router, mask Q + A).
        mod = ModSpec(scheme="gamma", layers=sorted(spec["mod_layers_idx"]),
                      train_skip_fraction=float(spec.get("capacity_factor", 0.5)),
                      router_loss_coef=float(spec.get("router_aux_loss_coef", 0.01)),
                      prefill_threshold=float(spec.get("prefill_threshold", 0.005)),
                      decode_threshold=float(spec.get("decode_threshold", 0.5)),
                      shared_router=bool(spec.get("shared_router", True)),
                      masked_tokens=str(spec.get("masked_tokens", "qa")))
        try:  # here, so that the error names the file
            GammaModRouting.check_spec(mod, num_layers)
        except ConfigError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        return mod

    @staticmethod
    def config_json_fields(cfg: ModelConfig) -> dict:
        mod = cfg.mod
        return {"mod": {"mod_enable": True, "mod_mode": "arank_mod", "mod_layers_idx": list(mod.layers),
                        "capacity_factor": mod.train_skip_fraction, "router_aux_loss_coef": mod.router_loss_coef,
                        "prefill_threshold": mod.prefill_threshold, "decode_threshold": mod.decode_threshold,
                        "shared_router": mod.shared_router, "masked_tokens": mod.masked_tokens}}

    @staticmethod
    def routers_from_authors(state: dict, cfg: ModelConfig, where: Path) -> dict:
        """The router, repeated as model.layers.{i}.router.weight (identical in every copy when shared), taken
        out of `state` and returned under our names."""
        copies = {k: state.pop(k) for k in [k for k in state if k.endswith(".router.weight")
                                            and k.startswith("model.layers.")]}
        if not copies:
            raise CheckpointError(f"{where}: γ-MoD checkpoint without model.layers.*.router.weight")
        layers = sorted(int(k.split(".")[2]) for k in copies)
        if layers != sorted(cfg.mod.layers):
            raise CheckpointError(f"{where}: routers at layers {layers} but mod_layers_idx is {cfg.mod.layers}")
        if not cfg.mod.shared_router:
            return {f"language_model.model.routing.routers.{key.split('.')[2]}.weight": value
                    for key, value in copies.items()}
        first_key, first = next(iter(copies.items()))
        for key, value in copies.items():
            if value.shape != first.shape or not torch.equal(value, first):
                raise CheckpointError(f"{where}: γ-MoD router copies differ: {key} != {first_key} (one shared "
                                      "router; a model with one router per layer says mod.shared_router false)")
        return {"language_model.model.routing.router.weight": first}

    @staticmethod
    def routers_to_authors(theirs: dict, model) -> None:
        routing = model.language_model.model.routing
        for layer in model.cfg.mod.layers:
            theirs[f"model.layers.{layer}.router.weight"] = routing.router_for(layer).weight.detach().clone()

    def keep_probability(self, normed: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.router_for(layer_idx)(normed).float()
        return logits, logits.softmax(dim=-1)[..., 1]

    def route(self, layer_idx, hidden, normed, ctx: RoutingContext) -> Route | None:
        if layer_idx not in self.mod_layers:
            return None
        logits, p = self.keep_probability(normed, layer_idx)
        real = ctx.real
        aux = None
        if ctx.training:
            keep = self.masked_top_k(p, ctx, self.spec.train_skip_fraction, self.spec.masked_tokens)
            ce = F.cross_entropy(logits[real], keep.long()[real])
            aux = ce * self.spec.router_loss_coef
        else:
            is_decode = ctx.token_types == RESPONSE
            if self.spec.fixed_skip is not None:
                prompt_keep = self.masked_top_k(p, ctx, self.spec.fixed_skip)
            else:
                prompt_keep = p > self.spec.prefill_threshold
            keep = real & torch.where(is_decode, p >= self.spec.decode_threshold, prompt_keep)
        return Route(keep=keep, mlp_scale=p.to(hidden.dtype), compact_positions=True, aux_loss=aux)

    @staticmethod
    def masked_top_k(p: torch.Tensor, ctx: RoutingContext, skip_fraction: float, masked: str = "qa") -> torch.Tensor:
        """Skip floor(skip_fraction * routable) tokens per row, the lowest p first. Routable: system + image
        tokens, plus answer tokens when only the question is masked ("q"), or every token ("none"); the others
        are force-kept (top-k on p with +1 for them)."""
        real = ctx.real
        types = ctx.token_types
        if masked == "none":
            routable = real
        else:
            routable = (types == SYSTEM) | (types == IMAGE) | ((types == RESPONSE) if masked == "q" else False)
            routable = routable & real
        n_skip = (routable.sum(dim=1).double() * skip_fraction).floor().long()
        score = p.detach() + (~routable).float()
        return real & ~(rank_within_rows(score, descending=False) < n_skip[:, None])
