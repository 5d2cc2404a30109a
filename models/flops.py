"""FLOPs: the papers' prefill count, taken from the real decoder layers on the meta device; measured with
torch.utils.flop_counter / fvcore.

Prefill count (`flops_for_tokens`, `flops_analytic`, the tables' and efficiency records' TFLOPs): 2 FLOPs per
multiply-add, LLM decoder only, prefill only, counted on the real layers. The model's decoder loop (`ModDecoder`,
four layers built from the config's LLM dims, as every model of those dims builds them) runs a 4-token prompt on
the meta device under torch.utils.flop_counter, layer l on l + 1 tokens (`FixedCountRouting`: the first three on
the routed, packed path, the last on the whole prompt); each layer's attention and MLP count gives the per-layer
polynomial a*s + b*s^2 exactly (integer counts; the s x s attention block is the quadratic term, the projections
and MLP the linear one), and a count with a constant or any other term is an error (`decoder_layer_counts`,
`fit_layer_polynomial`). The polynomial, counted once per LLM config (`layer_polynomial`), is evaluated at each
layer's token count, which may be fractional (a run's mean). It equals the papers' formula (`layer_flops`, a test
checks it): 8*s*h^2 (q, k, v, o projections; with grouped K/V heads 4*s*h^2 + 4*s*h*h_kv) + 4*s^2*h (scores and
weighted sum over the full s x s block, as the kernels compute it) + 6*s*h*I (gate, up, down), hidden h, MLP
width I. An MoD layer counts the tokens it runs: s*(1-R) for γ-MoD at skip ratio R; for p-MoD the text tokens
plus trunc(n_vision * ratio_l) (in float32, as the release computes it). Vision encoder, projector, lm_head,
router, rotary tables and decode steps are not counted.

Full (`flops_full_meta`, `modbench flops --full`): every component, counted by torch.utils.flop_counter on
the meta device. Each host front-end runs its own encode() with its parts named (vision_encoder,
vision_encoder_aux, patch_info_mining, projector), on inputs of the shapes its preprocess() gives
(`meta_pixels`: LLaVA-NeXT's tiles follow the image size; a CLIP tower runs up to the layer its projector reads,
`models.clip.clip_hidden_state`, so the last layer, which the authors' code runs and discards, is not counted),
and the decoder runs its own loop with a fixed count
of tokens per layer (`FixedCountRouting`), so what is counted is what a forward runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from fractions import Fraction
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import LlmConfig, ModelConfig
from .routing import IMAGE, RESPONSE, Route, RoutingScheme, scheme_class

CONVENTION = ("2 FLOPs per multiply-add; LLM decoder prefill only; counted on the real decoder layers on the meta "
              "device (torch.utils.flop_counter; = the papers' 8sh^2 + 4s^2h + 6shI per layer)")
TORCH_CONVENTION = "torch.utils.flop_counter: 2 FLOPs per multiply-add"
FVCORE_CONVENTION = "fvcore: 1 flop per multiply-add (half the torch counter on the same matmuls)"


def layer_flops(tokens: float, hidden: int, mlp: int, kv_hidden: int | None = None) -> float:
    """The papers' formula for one decoder layer on `tokens` tokens (the convention the meta count is checked
    against; the count itself comes from the layers, `layer_polynomial`)."""
    kv = hidden if kv_hidden is None else kv_hidden
    return 4 * tokens * hidden**2 + 4 * tokens * hidden * kv + 4 * tokens**2 * hidden + 6 * tokens * hidden * mlp


# Layer l of the counted decoder runs FIT_TOKENS[l] tokens of a max(FIT_TOKENS)-token prompt: two points give
# a*s + b*s^2, the others check it (no constant, no other power).
FIT_TOKENS = (1, 2, 3, 4)
# Every attention implementation computes the same s x s block (eager's two matmuls, the fused kernels); the
# count runs torch's (flash-attention's needs a GPU, not the meta device).
COUNT_ATTN_IMPLEMENTATION = "sdpa"


@torch.no_grad()
def decoder_layer_counts(llm: LlmConfig, tokens: tuple[int, ...] = FIT_TOKENS,
                         attn_implementation: str = COUNT_ATTN_IMPLEMENTATION) -> list[int]:
    """FLOPs (torch.utils.flop_counter) of each layer's attention and MLP when the model's decoder loop, built on
    the meta device with len(tokens) layers of `llm`'s dims, runs a prompt of max(tokens) tokens and layer l
    runs tokens[l] of them (`FixedCountRouting`: the routed, packed path below max(tokens), the whole prompt
    at it). No weights, no data; the layers are the ones every model of these dims builds (ModDecoder's)."""
    from .core import ModDecoder

    counted = ModelConfig(name="layer-count", llm=dataclasses.replace(llm, num_layers=len(tokens)),
                          attn_implementation=attn_implementation)
    with torch.device("meta"):
        decoder = ModDecoder(counted)
    seq_len = max(tokens)
    decoder.routing = FixedCountRouting(counted, list(tokens), seq_len)
    prompt = torch.empty(1, seq_len, llm.hidden_size, device="meta")
    types = torch.full((1, seq_len), IMAGE, dtype=torch.long, device="meta")
    with torch_flop_counter() as counter:
        decoder(prompt, types)
    # the loop calls each layer's attention and MLP (not the layer's own forward): count those children
    child = re.compile(rf"^{re.escape(type(decoder).__name__)}\.layers\.(\d+)\.[^.]+$")
    per_layer = [0] * len(tokens)
    for name, ops in counter.get_flop_counts().items():
        if match := child.match(name):
            per_layer[int(match.group(1))] += int(sum(ops.values()))
    return per_layer


def fit_layer_polynomial(counts: dict[int, int]) -> tuple[float, float]:
    """(a, b) with counts[s] == a*s + b*s^2 exactly at every point s (at least three); a ValueError when the
    counts fit no such polynomial (a constant term, a cubic one, a count that is not a layer's)."""
    if len(counts) < 3:
        raise ValueError(f"fitting a*s + b*s^2 and checking it needs three points or more, got {sorted(counts)}")
    (s1, f1), (s2, f2), *rest = sorted(counts.items())
    det = s1 * s2 * (s2 - s1)
    a = Fraction(f1 * s2 * s2 - f2 * s1 * s1, det)
    b = Fraction(f2 * s1 - f1 * s2, det)
    misfit = {s: f for s, f in rest if a * s + b * s * s != f}
    if misfit:
        raise ValueError(f"decoder layer FLOPs {dict(sorted(counts.items()))} at s tokens are not a*s + b*s^2 "
                         f"(a = {a}, b = {b} from s = {s1}, {s2} miss s = {sorted(misfit)})")
    return float(a), float(b)


@lru_cache(maxsize=None)
def _layer_polynomial(llm_json: str) -> tuple[float, float]:
    llm = LlmConfig(**json.loads(llm_json))
    counts = dict(zip(FIT_TOKENS, decoder_layer_counts(llm)))
    a, b = fit_layer_polynomial(counts)
    # The count must be the papers' convention (the records say so): a counter that lost the attention op, a
    # layer name the pattern no longer matches (all zeros) or a kernel counted another way is an error, not a
    # silently different TFLOPs column.
    papers = {s: layer_flops(s, llm.hidden_size, llm.intermediate_size, kv_hidden(llm)) for s in counts}
    if counts != papers:
        raise ValueError(f"decoder layer FLOPs counted on the meta device {counts} differ from the papers' "
                         f"8sh^2 + 4s^2h + 6shI {papers} at s tokens (LLM {llm})")
    return a, b


def layer_polynomial(cfg: ModelConfig) -> tuple[float, float]:
    """(a, b): a decoder layer of `cfg` running s tokens costs a*s + b*s^2 FLOPs, counted on the real layers on
    the meta device (`decoder_layer_counts`) once per LLM config (cached by its JSON)."""
    return _layer_polynomial(json.dumps(dataclasses.asdict(cfg.llm), sort_keys=True))


def kv_hidden(cfg: ModelConfig | LlmConfig) -> int:
    llm = cfg.llm if isinstance(cfg, ModelConfig) else cfg
    return llm.num_kv_heads * (llm.hidden_size // llm.num_heads)


def tokens_per_layer(cfg: ModelConfig, seq_len: float, skip: float | None = None,
                     image_tokens: int | None = None) -> list[float]:
    """Tokens each layer runs, by the model's routing scheme. `skip` (share of tokens an MoD layer skips)
    overrides the scheme's own rule."""
    return scheme_class(cfg.mod.scheme).tokens_per_layer(cfg, seq_len, skip, image_tokens)


def flops_analytic(cfg: ModelConfig, seq_len: float, skip: float | None = None,
                   image_tokens: int | None = None) -> dict:
    """Prefill FLOPs (`flops_for_tokens`) of a `seq_len`-token prompt, each layer at the count its scheme gives
    (`tokens_per_layer`; `skip`, `image_tokens` as there). The name is the records' (`tflops_analytic`)."""
    tokens = tokens_per_layer(cfg, seq_len, skip, image_tokens)
    return flops_for_tokens(cfg, tokens, seq_len=seq_len, skip=skip)


def flops_for_tokens(cfg: ModelConfig, tokens: list[float], **extra) -> dict:
    """Prefill FLOPs when layer l runs tokens[l] tokens (e.g. the counts a real forward kept, or a run's mean):
    the layers' meta-device polynomial (`layer_polynomial`) at each count. The first call for an LLM config
    counts on the meta device: under an outer FlopCounterMode that count would add to the outer one's."""
    a, b = layer_polynomial(cfg)
    per_layer = [a * t + b * t * t for t in tokens]
    return {
        "model": cfg.name,
        "convention": CONVENTION,
        **extra,
        "layer_polynomial": {"s": a, "s^2": b},
        "tokens_per_layer": tokens,
        "flops_per_layer": per_layer,
        "tflops": sum(per_layer) / 1e12,
    }


# The loop calls each layer's attention and MLP (not the layer's own forward): count those children.
_LAYER_KEY = re.compile(r"\.model\.layers\.\d+\.[^.]+$")


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def torch_flop_counter(**kwargs) -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU fused attention kernel (torch registers only the CUDA ones)."""
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    kwargs.setdefault("display", False)
    return FlopCounterMode(custom_mapping=mapping, **kwargs)


def llm_layer_flops(counter: FlopCounterMode) -> float:
    """The decoder layers' share of a FlopCounterMode run (router, lm_head and vision excluded)."""
    return float(sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items() if _LAYER_KEY.search(name)))


def fvcore_flops(module: torch.nn.Module, inputs: tuple) -> float:
    """fvcore's count (one multiply-add = one flop) of module(*inputs)."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return float(analysis.total())


@torch.no_grad()
def flops_full_meta(cfg: ModelConfig, seq_len: int, skip: float | None = None, new_tokens: int = 0,
                    image_tokens: int | None = None, image_size: tuple[int, int] | None = None) -> dict:
    """Full accounting at any size without weights: the model is built on the meta device; the front-end
    encodes one image of `image_size` (width, height; the default is the front-end's largest input) part by
    part, and the decoder runs at the shapes a prefill (layer l on tokens_per_layer[l] tokens) and
    `new_tokens` decode steps (so 1 + new_tokens generated tokens, each through lm_head) would have, all
    counted by torch.utils.flop_counter. Decode steps run every layer (an upper bound for γ-MoD). For p-MoD the image
    tokens are the encoded image's unless `image_tokens` says otherwise."""
    from .core import ModCache
    from .params import build_on_meta

    model = build_on_meta(cfg)
    decoder = model.language_model.model
    hidden = cfg.llm.hidden_size
    components: dict[str, float] = {}

    def count(fn) -> float:
        with torch_flop_counter() as counter:
            fn()
        return float(counter.get_total_flops())

    def stage(component: str, fn):
        with torch_flop_counter() as counter:
            out = fn()
        components[component] = components.get(component, 0.0) + float(counter.get_total_flops())
        return out

    meta = dict(device="meta", dtype=torch.float32)
    if model.vision is not None:
        features = model.vision.encode(model.vision.meta_pixels(image_size), stage=stage)
        if image_tokens is None:
            image_tokens = int(features[0].shape[0])
    tokens = [int(round(t)) for t in tokens_per_layer(cfg, seq_len, skip, image_tokens)]
    routing = decoder.routing
    # The model's own decoder loop runs, layer l on tokens[l] tokens of the prefill (a fixed count per layer in
    # place of the routers' data-dependent choice); decode steps run every layer.
    decoder.routing = fixed = FixedCountRouting(cfg, tokens, seq_len)
    cache = ModCache(cfg.llm.num_layers, 1, torch.device("meta")) if new_tokens else None
    prompt = torch.empty(1, seq_len, hidden, **meta)
    types = torch.full((1, seq_len), IMAGE, dtype=torch.long, device="meta")
    components["llm_prefill"] = count(lambda: decoder(prompt, types, cache=cache))
    mod_layers = list(routing.mod_layers)
    if mod_layers:
        x = torch.empty(1, seq_len, hidden, **meta)
        components["router"] = count(lambda: [routing.router_for(i)(x) for i in mod_layers])
        if routing.routes_decode_tokens:  # γ-MoD also routes each decode token (p-MoD decodes densely)
            x1 = torch.empty(1, 1, hidden, **meta)
            components["router"] += count(lambda: [routing.router_for(i)(x1) for i in mod_layers]) * new_tokens
    head_in = torch.empty(1, 1, hidden, **meta)
    # one token's logits after the prefill and after each decode step
    components["lm_head"] = count(lambda: model.language_model.lm_head(head_in)) * (1 + new_tokens)
    if new_tokens:
        fixed.prefill = False
        step = torch.empty(1, 1, hidden, **meta)
        step_type = torch.full((1, 1), RESPONSE, dtype=torch.long, device="meta")
        components["llm_decode"] = count(lambda: [decoder(step, step_type, cache=cache) for _ in range(new_tokens)])
    total = sum(components.values())
    return {
        "model": cfg.name, "convention": TORCH_CONVENTION + " (meta device, no weights)", "seq_len": seq_len,
        "skip": skip, "new_tokens": new_tokens, "image_tokens": image_tokens, "tokens_per_layer": tokens,
        "tflops_per_component": {k: v / 1e12 for k, v in components.items()}, "tflops": total / 1e12,
    }


class FixedCountRouting(RoutingScheme):
    """Counting only: in a prefill of `seq_len` tokens layer l runs `tokens[l]` of them (the count the model's
    scheme gives, `tokens_per_layer`), known without data, so the decoder loop runs on the meta device; any
    other forward (a decode step) runs every layer."""

    def __init__(self, cfg: ModelConfig, tokens: list[int], seq_len: int) -> None:
        super().__init__(cfg)
        self.seq_len = seq_len
        self.counts = {layer: n for layer, n in enumerate(tokens) if n < seq_len}
        self.prefill = True  # the caller sets it False before the decode steps

    def route(self, layer_idx, hidden, normed, ctx) -> Route | None:
        if not hidden.is_meta:
            raise ValueError("FixedCountRouting counts FLOPs on the meta device only")
        if not self.prefill or layer_idx not in self.counts:
            return None
        keep = torch.empty(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return Route(keep=keep, kept_per_row=self.counts[layer_idx])


class _LanguageModelLogits(torch.nn.Module):
    """fvcore traces modules with tensor inputs and outputs: the decoder on given embeddings and types."""

    def __init__(self, language_model) -> None:
        super().__init__()
        self.lm = language_model

    def forward(self, inputs_embeds, token_types):
        return self.lm(inputs_embeds=inputs_embeds, token_types=token_types).logits


@torch.no_grad()
def measure_sample_flops(model, prompt: str, image=None, fvcore: bool = False) -> dict:
    """One sample's prefill, counted as it really ran: the torch counter (whole model and decoder layers),
    optionally fvcore (1 per multiply-add; it has no formula for the fused attention kernel, so its figure
    covers the projections and MLPs), and the prefill count (`flops_for_tokens`) for the tokens each layer kept."""
    images = [image] if image is not None else None
    with torch_flop_counter(depth=None) as counter:
        out = model([prompt], images, collect_stats=True)
    tokens = out.kept[0].sum(dim=1).double().tolist()
    record = {
        "convention": TORCH_CONVENTION,
        "seq_len": int(out.total[0, 0].sum()),
        "tokens_per_layer": tokens,
        "tflops_total_measured": counter.get_total_flops() / 1e12,
        "tflops_llm_measured": llm_layer_flops(counter) / 1e12,
        "tflops_llm_analytic": flops_for_tokens(model.cfg, tokens)["tflops"],
    }
    if fvcore:
        from fvcore.nn import FlopCountAnalysis

        batch = model.build_batch([prompt], images)
        analysis = FlopCountAnalysis(_LanguageModelLogits(model.language_model),
                                     (batch.inputs_embeds, batch.token_types))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        layers = sum(v for k, v in analysis.by_module().items() if re.fullmatch(r"lm\.model\.layers\.\d+\.[^.]+", k))
        record["fvcore_convention"] = FVCORE_CONVENTION + "; attention kernel not counted by fvcore"
        record["tflops_llm_fvcore"] = layers / 1e12
    return record
