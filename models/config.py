"""Typed model configuration. YAML / JSON / CLI are views of these dataclasses; unknown keys are errors."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

# The built-in routing schemes (their classes register themselves: models/routing.py). A scheme registered from
# elsewhere (models.routing.register_scheme) is added to _ADDED_SCHEMES while it is registered, so that a config
# may name it without this module importing the registry (torch): `scheme_names()`.
SCHEMES = ("dense", "gamma", "pmod")
_ADDED_SCHEMES: list[str] = []
# γ-MoD masked routing learning: the token types that are force-kept in training ("masked" from routing).
MASKED_TOKENS = ("none", "q", "qa")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
# p-MoD (MCG-NJU/p-MoD pmod_llava_llama.py: build_mod_layers, ModLayer.weight_normalization, llava_arch.py).
PMOD_DECAYS = ("shiftedcos", "shiftedlinear")
PMOD_PATTERNS = PMOD_DECAYS + ("deep_all", "deep_all_include_last", "interleave")
PMOD_WEIGHT_NORMS = ("softmax", "sigmoid", "tanh", "none")
PMOD_TARGET_TOKENS = ("vision_all", "vision_hr")
PMOD_RANKINGS = ("released", "vision_only")
DTYPES = ("float32", "float16", "bfloat16")
# The built-in tokenizers a variant names (ModelConfig.tokenizer; trained by models/tokenizer.py): vocab sizes
BUILTIN_VOCAB_SIZES = {"tiny": 512, "scenes": 1024}
# γ-MoD Table 1's hand-made deployments over layers 1..L-2 (models/convert.py: mod_layers_by_pattern)
GAMMA_PATTERNS = ("all", "1of2", "2of3")
# How the lmms-eval plugin prompts and generates: lmms-eval's task YAMLs, or the γ-MoD / LLaVA-HR scripts
PROTOCOLS = ("lmms-eval", "llava")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the field."""


@dataclass
class LlmConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    # the LM head is the input embedding's matrix (small Llamas tie it: Llama-3.2-1B/3B; LLaVA's Vicuna does not).
    # A tied head turns copying a context token into the answer into one attention move: the CPU-scale reproduction's
    # letter answers (results/reproduction/dense_sweep.md)
    tie_word_embeddings: bool = False


@dataclass
class ConvNextConfig:
    """A timm ConvNeXt (the high-resolution "slow" branch of LLaVA-HR and Mini-Gemini-HD)."""

    depths: list[int] = field(default_factory=lambda: [3, 3, 27, 3])
    dims: list[int] = field(default_factory=lambda: [192, 384, 768, 1536])
    head_hidden_size: int = 1536  # convnext_large_mlp carries an MLP head (unused, but in the checkpoint)
    # timm's classifier (head.fc) as the authors' builder creates it: convnext_large_mlp() / convnext_xxlarge()
    # with timm's default 1000 classes. Unused by the forward pass, but its weights are in the checkpoint.
    num_classes: int = 0
    # LayerNorm eps: timm's 1e-6, except the authors' convnext_xxlarge (LLaVA-HR-X), built with 1e-5.
    norm_eps: float = 1e-6
    timm_name: str = "convnext_large_mlp.clip_laion2b_ft_320"


@dataclass
class VisionConfig:
    """A host's vision front-end: its CLIP tower's dims, and the fields each host family's front-end reads.
    LLaVA-1.5: one CLIP tower. LLaVA-HR: CLIP (fast, run at input_image_size/32*14) + ConvNeXt (slow, run at
    input_image_size) joined by mixture-of-resolution adapters. LLaVA-NeXT: CLIP over the tiles of the best of
    `grid_pinpoints` [height, width] plus a base view. Mini-Gemini-HD: CLIP over image_grid^2 crops (+ a global
    view) and a ConvNeXt map at input_image_size, joined by patch-info mining. Which of these a config is, is
    `ModelConfig.family` alone; that family's front-end module owns its token count and checks
    (HostFamily.image_tokens / check_vision)."""

    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    select_layer: int = -2
    projector: str = "mlp2x_gelu"
    # LLaVA-1.5 pads to a square with the CLIP mean colour before resizing.
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    convnext: ConvNextConfig | None = None  # llava-hr, mgm-hd: the high-resolution branch
    input_image_size: int = 0  # llava-hr, mgm-hd: the image size fed to the ConvNeXt (1024 for LLaVA-HR)
    adapters: bool = True  # llava-hr: adapters exist only when the vision tower was trained (not frozen)
    grid_pinpoints: list[list[int]] = field(default_factory=list)  # llava-next: candidate [height, width] grids
    image_grid: int = 1  # mgm-hd: crops per side
    image_global: bool = False  # mgm-hd: a global view besides the crops


# VisionConfig fields that only some front-ends read (the others describe the CLIP tower every host has): a
# family names those its front-end reads (HostFamily.vision_fields); a config that sets another is refused.
FRONT_END_FIELDS = ("convnext", "input_image_size", "adapters", "grid_pinpoints", "image_grid", "image_global")


@dataclass
class ModSpec:
    """Which layers are MoD layers and how they route.

    gamma: one shared Linear(hidden, 2) router (or one per MoD layer when `shared_router` is false);
    `train_skip_fraction` of the routable tokens are skipped per MoD layer in training, where `masked_tokens`
    says which are force-kept: "qa" (question and answer, the released code: only system + image routable),
    "q" (question only), "none"; inference keeps prompt tokens with p > prefill_threshold and a decode token
    runs a layer only when p >= decode_threshold.
    pmod: per-layer Linear(hidden, 1) router with a weight norm (TanhNorm); `ratios[i]` is the kept share of
    the routed (vision) tokens in `layers[i]` (empty ratios: `pmod_router_factor` for each). When both are
    empty the layers come from `pmod_pattern` (models/pmod.py); the `pmod_*` / `prd_*` fields are the released
    config.json keys (mod_target_layers, mod_router_factor, mod_weight_norm, mod_target_token_type,
    mod_bias_enabled, mod_special_init), parsed.
    """

    scheme: str = "dense"
    layers: list[int] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    train_skip_fraction: float = 0.5
    prefill_threshold: float = 0.005
    decode_threshold: float = 0.5
    router_loss_coef: float = 0.01
    shared_router: bool = True
    masked_tokens: str = "qa"
    # Benchmark knob, off by default: at inference, skip this share of the routable (system + image) prompt
    # tokens by top-k on p (as in training) instead of the p > prefill_threshold rule, for a controlled skip.
    fixed_skip: float | None = None
    # p-MoD. mod_target_layers = "{pmod_pattern}_decay_{prd_max_ratio}_{prd_min_ratio}" for the decay patterns,
    # else the pattern's name. Decay: R(l) = cos(l*pi/D)/2 + factor (shiftedcos) or (-l/D + 0.5) + factor
    # (shiftedlinear); l is MoD iff R(l) <= prd_max_ratio, keeping max(R(l), prd_min_ratio).
    pmod_pattern: str = "shiftedcos"
    # D above. None: num_layers - 1, a schedule at any depth (31 at 32 layers); the released code fixes 31,
    # which leaves a model of 8 layers or fewer without an MoD layer.
    pmod_decay_divisor: int | None = None
    prd_max_ratio: float = 0.85
    prd_min_ratio: float = 0.15
    pmod_router_factor: float = 0.5  # the decay's shift; the kept ratio of every MoD layer of other patterns
    # mod_weight_norm "{norm}_{scale}_{bias}": w = scale * norm(r) + bias (released: tanh_0.2_1, TanhNorm).
    pmod_weight_norm: str = "tanh"
    pmod_norm_scale: float = 0.2
    pmod_norm_bias: float = 1.0
    pmod_target_tokens: str = "vision_all"  # vision_all | vision_hr (llava-next: the tiles, not the base view)
    pmod_router_bias: bool = True  # mod_bias_enabled
    pmod_router_zero_init: bool = True  # mod_special_init
    # "released": top-k on w over the whole row with non-routed tokens at w(-inf), as the authors' code ranks
    # (a router saturated negative ties with text, which can take a slot); "vision_only": top-k on the
    # raw router logit over the routed tokens only.
    pmod_ranking: str = "released"


# Every ModSpec field but `scheme` is read by some routing schemes only: a scheme names those it reads
# (RoutingScheme.spec_fields); a config that sets another away from its default is refused where it is resolved or
# built (models.routing.validate_for_scheme): moving a spec to another scheme must not silently drop the first
# scheme's settings (fixed_skip on a p-MoD model, a pmod_* field on a γ-MoD one).
SCHEME_FIELDS = tuple(f.name for f in dataclasses.fields(ModSpec) if f.name != "scheme")


@dataclass
class ModelConfig:
    name: str
    llm: LlmConfig
    family: str = "llava"  # the host family (models/hosts.py): which front-end reads `vision`
    vision: VisionConfig | None = None
    mod: ModSpec = field(default_factory=ModSpec)
    hub_id: str = ""
    tiny: bool = False
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    seed: int = 0
    tokenizer: str = "tiny"  # built-in tokenizer of a variant built from its config (a checkpoint ships its own)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the largest image gives (0 without vision): the geometry of the family's front-end."""
        if self.vision is None:
            return 0
        from .hosts import host_family  # here: the host modules import this one

        validate_resolved(self)  # a family's geometry means nothing for a config it (or its scheme) refuses
        return host_family(self.family).image_tokens(self.vision)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return from_dict(cls, _without_legacy_kind(data))


def _without_legacy_kind(data: dict) -> dict:
    """Records written before `family` became the one name of the host (records.model.json, run.json's
    `resolved`) also carried `vision.kind`, the name of the family's front-end: it is dropped when it is the
    family's (else refused). Checkpoints never carried it."""
    vision = data.get("vision") if isinstance(data, dict) else None
    if not isinstance(vision, dict) or "kind" not in vision:
        return data
    from .hosts import host_family  # here: the host modules import this one

    family = host_family(data.get("family", ModelConfig.family))
    if vision["kind"] != family.legacy_vision_kind:
        written = (f"{family.name!r} was written as {family.legacy_vision_kind!r}" if family.legacy_vision_kind
                   else f"{family.name!r} never wrote one")
        raise ConfigError(f"vision.kind {vision['kind']!r} does not match family {family.name!r} (a field of older "
                          f"records, read only to check it: {written}); `family` alone names the host now")
    return {**data, "vision": {k: v for k, v in vision.items() if k != "kind"}}


def scheme_names() -> tuple[str, ...]:
    """The routing schemes a config may name: the built-in ones, then any registered from elsewhere."""
    return SCHEMES + tuple(_ADDED_SCHEMES)


def validate(cfg: ModelConfig) -> None:
    """Check what needs neither the host family nor the routing scheme (run as a config is made); each error names
    the offending field. The family's and the scheme's own checks: `validate_resolved`."""
    llm, mod = cfg.llm, cfg.mod
    if llm.hidden_size % llm.num_heads:
        raise ConfigError(f"llm.hidden_size ({llm.hidden_size}) must be divisible by llm.num_heads ({llm.num_heads})")
    if llm.num_heads % llm.num_kv_heads:
        raise ConfigError(f"llm.num_heads ({llm.num_heads}) must be divisible by llm.num_kv_heads ({llm.num_kv_heads})")
    schemes = scheme_names()
    if mod.scheme not in schemes:
        raise ConfigError(f"mod.scheme must be one of {schemes}, got {mod.scheme!r}")
    if cfg.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {cfg.attn_implementation!r}"
        )
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {cfg.dtype!r}")
    for i, layer in enumerate(mod.layers):
        if not 0 <= layer < llm.num_layers:
            raise ConfigError(f"mod.layers[{i}] = {layer} is out of range [0, {llm.num_layers})")
    if len(set(mod.layers)) != len(mod.layers):
        raise ConfigError(f"mod.layers has duplicates: {mod.layers}")
    for i, ratio in enumerate(mod.ratios):
        if not 0.0 < ratio <= 1.0 or math.isnan(ratio):
            raise ConfigError(f"mod.ratios[{i}] = {ratio} is outside (0, 1]")
    vision = cfg.vision
    if vision is not None and vision.image_size % vision.patch_size:
        raise ConfigError("vision.image_size must be a multiple of vision.patch_size")
    # The family's checks (the fields its front-end reads) and the scheme's (the ModSpec fields its routing reads)
    # come with their modules, which import torch: they run where a config is resolved or built
    # (`validate_resolved`), not here, so that the variant registry and what reads it (`modbench table`) stay light.


def validate_resolved(cfg: ModelConfig) -> ModelConfig:
    """`cfg` checked against its host family and its routing scheme: the fields each reads, and their own checks
    (models.hosts.validate_for_family, models.routing.validate_for_scheme). Their modules import torch, so this
    runs wherever a config is resolved or built (models.resolver.resolve, ModVlm, convert_to_mod) and before a
    family's geometry is read (ModelConfig.num_image_tokens), not as a config is made (`validate`)."""
    from .hosts import validate_for_family  # here: the host and scheme modules import this one
    from .routing import validate_for_scheme

    return validate_for_scheme(validate_for_family(cfg))


def _resolve_type(tp):
    """Strip Optional[...] and return the concrete type annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def from_dict(cls, data, path: str = ""):
    """Build dataclass `cls` from a plain dict, recursively; unknown keys raise ConfigError naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or cls.__name__
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        tp = _resolve_type(hints[key])
        sub = f"{path}.{key}" if path else key
        if dataclasses.is_dataclass(tp) and value is not None:
            value = from_dict(tp, value, sub)
        elif typing.get_origin(tp) is tuple and value is not None:
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None
