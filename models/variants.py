"""Named model variants: one config entry each, registered through `register_variant`."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from .config import (
    BUILTIN_VOCAB_SIZES,
    ConfigError,
    ConvNextConfig,
    LlmConfig,
    ModelConfig,
    ModSpec,
    VisionConfig,
)

TINY_VOCAB_SIZE, SCENE_VOCAB_SIZE = BUILTIN_VOCAB_SIZES["tiny"], BUILTIN_VOCAB_SIZES["scenes"]

@dataclass(frozen=True)
class PaperRow:
    """A row of one of the papers' tables (results/paper/*.csv; `suite.tables.TABLES` names them): the table's
    name and the row's values in the table's key columns."""

    table: str
    key: tuple[str, ...]


@dataclass(frozen=True)
class VariantEntry:
    """A registered variant: its config, and what the tables read about it: the papers' rows it is the model of,
    and its tiny twin (a CPU-sized variant of the same host and scheme that stands in for it without weights)."""

    config: ModelConfig
    paper: tuple[PaperRow, ...] = ()
    twin: str = ""

    @property
    def name(self) -> str:
        return self.config.name


_VARIANTS: dict[str, VariantEntry] = {}


def register_variant(cfg: ModelConfig, paper: tuple[PaperRow, ...] = (), twin: str = "") -> ModelConfig:
    """Register `cfg` under its name (its family's and its routing scheme's checks run where it is resolved or
    built: `models.config.validate_resolved`); `paper`: the papers' rows it is the model of; `twin`: its tiny twin."""
    if cfg.name in _VARIANTS:
        raise ConfigError(f"variant {cfg.name!r} is registered twice")
    _VARIANTS[cfg.name] = VariantEntry(cfg, tuple(paper), twin)
    return cfg


def get_variant(name: str) -> ModelConfig:
    """A copy of a registered variant's config (callers may change it freely)."""
    return copy.deepcopy(_entry(name).config)


def variant_entry(name: str) -> VariantEntry:
    return copy.deepcopy(_entry(name))


def _entry(name: str) -> VariantEntry:
    if name not in _VARIANTS:
        raise ConfigError(f"unknown model variant {name!r}; known: {', '.join(sorted(_VARIANTS))}")
    return _VARIANTS[name]


def variant_names() -> list[str]:
    return list(_VARIANTS)


def list_variants() -> list[ModelConfig]:
    return [copy.deepcopy(entry.config) for entry in _VARIANTS.values()]


def variant_entries() -> list[VariantEntry]:
    return [copy.deepcopy(entry) for entry in _VARIANTS.values()]


def rows(table: str, *keys: tuple[str, ...]) -> tuple[PaperRow, ...]:
    return tuple(PaperRow(table, key) for key in keys)


# the papers' tables (results/paper/*.csv) by the names suite/tables.py gives them
T1, T3, T4, T6 = "gamma_mod_table1", "gamma_mod_table3", "gamma_mod_table4", "gamma_mod_table6"
PMOD_T1, PMOD_T2 = "pmod_table1", "pmod_table2"


def pmod_rows(model: str) -> tuple[PaperRow, ...]:
    """p-MoD's Tables 1 and 2 list the same models."""
    return rows(PMOD_T1, (model, "7B")) + rows(PMOD_T2, (model, "7B"))


def with_mod(cfg: ModelConfig, name: str, mod: ModSpec, hub_id: str = "") -> ModelConfig:
    """The same host with another MoD spec (an MoD variant is its dense host plus a spec)."""
    return dataclasses.replace(copy.deepcopy(cfg), name=name, mod=mod, hub_id=hub_id)


# --- LLaVA-1.5 ---------------------------------------------------------------------------------------------
VICUNA_7B = LlmConfig(num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=32, intermediate_size=11008,
                      vocab_size=32000, rope_theta=10000.0, max_position_embeddings=4096, rms_norm_eps=1e-5)
CLIP_L_336 = VisionConfig(image_size=336, patch_size=14, hidden_size=1024, num_layers=24,
                          num_heads=16, intermediate_size=4096)

LLAVA_15_7B = register_variant(ModelConfig(
    name="llava-1.5-7b", family="llava", llm=VICUNA_7B, vision=CLIP_L_336, hub_id="liuhaotian/llava-v1.5-7b",
    dtype="float16",
), paper=rows(T3, ("LLaVA", "dense", "7B")) + rows(T6, ("dense", "LLaVA-1.5", "7B")) + pmod_rows("LLaVA-v1.5"),
    twin="tiny-llava")
register_variant(with_mod(LLAVA_15_7B, "pmod-llava-1.5-7b", ModSpec(scheme="pmod"),
                          hub_id="MCG-NJU/p-MoD-LLaVA-v1.5-7B"),
                 paper=pmod_rows("p-MoD-LLaVA-v1.5"), twin="tiny-llava-pmod")



def gamma_spec(num_layers: int, skip: float) -> ModSpec:
    """γ-MoD as released: every layer MoD except the 3 first and the last (ARank, k = 4)."""
    return ModSpec(scheme="gamma", layers=list(range(3, num_layers - 1)), train_skip_fraction=skip)


# γ-MoD on LLaVA-1.5 (Tables 3 and 6) has no released checkpoint
register_variant(with_mod(LLAVA_15_7B, "llava-1.5-7b-gmod-0.34", gamma_spec(32, 0.34)),
                 paper=rows(T3, ("LLaVA", "gamma-mod-0.3", "7B")) + rows(T6, ("sparse", "gamma-mod-LLaVA", "7B")),
                 twin="tiny-llava-gmod")
register_variant(with_mod(LLAVA_15_7B, "llava-1.5-7b-gmod-0.5", gamma_spec(32, 0.5)),
                 paper=rows(T3, ("LLaVA", "gamma-mod-0.5", "7B")), twin="tiny-llava-gmod")

# --- LLaVA-HR (γ-MoD's main host) ---------------------------------------------------------------------------
VICUNA_13B = LlmConfig(num_layers=40, hidden_size=5120, num_heads=40, num_kv_heads=40, intermediate_size=13824,
                       vocab_size=32000, rope_theta=10000.0, max_position_embeddings=4096, rms_norm_eps=1e-5)
CONVNEXT_L = ConvNextConfig(depths=[3, 3, 27, 3], dims=[192, 384, 768, 1536], head_hidden_size=1536,
                            num_classes=1000, timm_name="convnext_large_mlp.clip_laion2b_ft_320")
CONVNEXT_XXL = ConvNextConfig(depths=[3, 4, 30, 3], dims=[384, 768, 1536, 3072], head_hidden_size=0,
                              num_classes=1000, norm_eps=1e-5, timm_name="convnext_xxlarge.clip_laion2b_soup_ft_in1k")
HR_VISION = dataclasses.replace(CLIP_L_336, convnext=CONVNEXT_L, input_image_size=1024)

LLAVA_HR_7B = register_variant(ModelConfig(
    name="llava-hr-7b", family="llava-hr", llm=VICUNA_7B, vision=HR_VISION,
    hub_id="favor123/llava-hr-7b-sft-1024", dtype="float16"),
    paper=rows(T1, ("baseline", "LLaVA-HR dense")) + rows(T3, ("LLaVA-HR", "dense", "7B"))
    + rows(T4, ("LLaVA-HR-7B dense",)) + rows(T6, ("dense", "LLaVA-HR", "7B")), twin="tiny-llava-hr")
LLAVA_HR_13B = register_variant(ModelConfig(
    name="llava-hr-13b", family="llava-hr", llm=VICUNA_13B, vision=HR_VISION,
    hub_id="favor123/llava-hr-13b-sft-1024", dtype="float16"),
    paper=rows(T3, ("LLaVA-HR", "dense", "13B")) + rows(T6, ("dense", "LLaVA-HR", "13B")))
register_variant(ModelConfig(
    name="llava-hr-x-13b", family="llava-hr", llm=VICUNA_13B,
    vision=dataclasses.replace(HR_VISION, convnext=CONVNEXT_XXL),
    hub_id="favor123/llava-hr-13b-x-sft-1024", dtype="float16"))
# The released 0.34 model stands for Table 1's rows at a 0.34 routing ratio: ARank deployment, masked Q, 34 %
register_variant(with_mod(LLAVA_HR_7B, "llava-hr-7b-gmod-0.34", gamma_spec(32, 0.34),
                          hub_id="YaxinLuo/Gamma-MoD-llava-hr-7b-0.34"),
                 paper=rows(T1, ("mod_layer", "ARank-based deployment"), ("masked_token", "Q"), ("routing_ratio", "34%"))
                 + rows(T3, ("LLaVA-HR", "gamma-mod-0.3", "7B")) + rows(T4, ("gamma-mod-0.3",)),
                 twin="tiny-llava-hr-gmod")
# The paper's 0.5 model of the 7B host (Tables 1, 3, 4, 6) has no released checkpoint.
register_variant(with_mod(LLAVA_HR_7B, "llava-hr-7b-gmod-0.5", gamma_spec(32, 0.5)),
                 paper=rows(T1, ("shared_router", "shared"), ("routing_ratio", "51%"))
                 + rows(T3, ("LLaVA-HR", "gamma-mod-0.5", "7B")) + rows(T4, ("gamma-mod-0.5",))
                 + rows(T6, ("sparse", "gamma-mod-LLaVA-HR", "7B")), twin="tiny-llava-hr-gmod")
register_variant(with_mod(LLAVA_HR_13B, "llava-hr-13b-gmod-0.34", gamma_spec(40, 0.34),
                          hub_id="YaxinLuo/Gamma-MoD-llava-hr-13b-0.34"),
                 paper=rows(T3, ("LLaVA-HR", "gamma-mod-0.3", "13B")))
register_variant(with_mod(LLAVA_HR_13B, "llava-hr-13b-gmod-0.5", gamma_spec(40, 0.5),
                          hub_id="YaxinLuo/Gamma-MoD-llava-hr-13b-0.5"),
                 paper=rows(T3, ("LLaVA-HR", "gamma-mod-0.5", "13B")) + rows(T6, ("sparse", "gamma-mod-LLaVA-HR", "13B")))

# --- LLaVA-NeXT (p-MoD's second host) ----------------------------------------------------------------------
NEXT_VISION = dataclasses.replace(CLIP_L_336,
                                  grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])
LLAVA_NEXT_7B = register_variant(ModelConfig(
    name="llava-next-7b", family="llava-next", llm=VICUNA_7B, vision=NEXT_VISION,
    hub_id="liuhaotian/llava-v1.6-vicuna-7b", dtype="float16"), paper=pmod_rows("LLaVA-NeXT"), twin="tiny-llava-next")
register_variant(with_mod(LLAVA_NEXT_7B, "pmod-llava-next-7b", ModSpec(scheme="pmod"),
                          hub_id="MCG-NJU/p-MoD-LLaVA-NeXT-7B"),
                 paper=pmod_rows("p-MoD-LLaVA-NeXT"), twin="tiny-pmod-llava-next")

# --- Mini-Gemini-HD ------------------------------------------------------------------------------------------
CONVNEXT_L_TRUNK = ConvNextConfig(depths=[3, 3, 27, 3], dims=[192, 384, 768, 1536], head_hidden_size=0,
                                  timm_name="openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup")
MGM_HD_VISION = dataclasses.replace(CLIP_L_336, convnext=CONVNEXT_L_TRUNK, input_image_size=1536,
                                    image_grid=2, image_global=True)
MGM_HD_7B = register_variant(ModelConfig(
    name="mgm-hd-7b", family="mgm-hd", llm=VICUNA_7B, vision=MGM_HD_VISION, hub_id="YanweiLi/MGM-7B-HD",
    dtype="float16"), paper=rows(T3, ("Mini-Gemini-HD", "dense", "7B")), twin="tiny-mgm-hd")
register_variant(with_mod(MGM_HD_7B, "mgm-hd-7b-gmod-0.34", gamma_spec(32, 0.34),
                          hub_id="YaxinLuo/Gamma-MoD-Mini-Gemini-HD-7b-0.34"),
                 paper=rows(T3, ("Mini-Gemini-HD", "gamma-mod-0.3", "7B")), twin="tiny-mgm-hd-gmod")
register_variant(with_mod(MGM_HD_7B, "mgm-hd-7b-gmod-0.5", gamma_spec(32, 0.5),
                          hub_id="YaxinLuo/Gamma-MoD-Mini-Gemini-HD-7b-0.5"),
                 paper=rows(T3, ("Mini-Gemini-HD", "gamma-mod-0.5", "7B")), twin="tiny-mgm-hd-gmod")

# --- tiny twins (CPU, seconds) -----------------------------------------------------------------------------
TINY_LLM = LlmConfig(num_layers=6, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128,
                     vocab_size=TINY_VOCAB_SIZE, max_position_embeddings=2048)
TINY_CLIP = VisionConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=3, num_heads=2,
                         intermediate_size=64)

TINY_LLAVA = register_variant(ModelConfig(name="tiny-llava", family="llava", llm=TINY_LLM, vision=TINY_CLIP,
                                          tiny=True))


def tiny_gamma() -> ModSpec:
    """γ-MoD for the tiny twins. Their routers are untrained, so p sits near 0.5 and the released prefill rule
    (p > 0.005) would keep every token; a prefill threshold of 0.5 makes them skip about half, as a trained
    router does, so the CI matrix exercises the routed path, the skip statistics and the FLOPs saving."""
    return ModSpec(scheme="gamma", layers=[1, 2, 3, 4], prefill_threshold=0.5)

register_variant(with_mod(TINY_LLAVA, "tiny-llava-gmod", tiny_gamma()))
register_variant(with_mod(TINY_LLAVA, "tiny-llava-pmod", ModSpec(scheme="pmod")))

# LLaVA-HR twin: CLIP built for 24 px (3x3 position grid) runs at 32 px (4x4, resampled), ConvNeXt at 128 px.
TINY_HR_VISION = VisionConfig(image_size=24, patch_size=8, hidden_size=32, num_layers=4,
                              num_heads=2, intermediate_size=64, input_image_size=128,
                              convnext=ConvNextConfig(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32],
                                                      head_hidden_size=32, timm_name=""))
TINY_LLAVA_HR = register_variant(ModelConfig(name="tiny-llava-hr", family="llava-hr", llm=TINY_LLM,
                                             vision=TINY_HR_VISION, tiny=True))
register_variant(with_mod(TINY_LLAVA_HR, "tiny-llava-hr-gmod", tiny_gamma()))

# CPU-sized LLaVA-HR-shaped pair for the speed benchmark (`modbench latency --compare`): 12 layers, hidden 512,
# 1024 image tokens + ~60 text; the γ-MoD twin skips half of the routable tokens (fixed ratio, see ModSpec).
CPU_BENCH_LLM = LlmConfig(num_layers=12, hidden_size=512, num_heads=8, num_kv_heads=8, intermediate_size=1408,
                          vocab_size=TINY_VOCAB_SIZE, max_position_embeddings=4096)
CPU_LLAVA_HR = register_variant(ModelConfig(name="cpu-llava-hr", family="llava-hr", llm=CPU_BENCH_LLM,
                                            vision=TINY_HR_VISION))
register_variant(with_mod(CPU_LLAVA_HR, "cpu-llava-hr-gmod-0.5",
                          ModSpec(scheme="gamma", layers=list(range(1, 11)), fixed_skip=0.5)))

TINY_NEXT_VISION = dataclasses.replace(TINY_CLIP, grid_pinpoints=[[32, 64], [64, 32], [64, 64]])
TINY_LLAVA_NEXT = register_variant(ModelConfig(name="tiny-llava-next", family="llava-next", llm=TINY_LLM,
                                               vision=TINY_NEXT_VISION, tiny=True))
register_variant(with_mod(TINY_LLAVA_NEXT, "tiny-pmod-llava-next", ModSpec(scheme="pmod")))

# Mini-Gemini-HD twin: 4 x 4 tokens per view, 2 x 2 crops + global, each token mines a 2 x 2 region.
TINY_MGM_VISION = dataclasses.replace(TINY_CLIP, input_image_size=64, image_grid=2, image_global=True,
                                      convnext=ConvNextConfig(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32],
                                                              head_hidden_size=0, timm_name=""))
TINY_MGM_HD = register_variant(ModelConfig(name="tiny-mgm-hd", family="mgm-hd", llm=TINY_LLM, vision=TINY_MGM_VISION,
                                           tiny=True))
register_variant(with_mod(TINY_MGM_HD, "tiny-mgm-hd-gmod", tiny_gamma()))

# --- CPU-scale reproduction (`modbench reproduce`): trained from scratch on drawn scenes (tasks/scenes.py) ---
# LLaVA-1.5-shaped: a CLIP-like tower on 80 px images (patch 8 -> 100 image tokens) and an 8-layer LLM (hidden 64;
# its cost bounds the reproduction on 2 cores). A prompt is 33 system + 100 image + ~22 question tokens: image
# tokens dominate, as in LLaVA-HR (1024 of ~1,400). The tower is hidden 128 x 4 layers: a 96 x 3 one learnt to
# count but named shapes at chance, leaving the dense model at chance on most held-out sets (dense sweep,
# results/reproduction/dense_sweep.md); it costs ~7 % of a training step more.
REPRO_LLM = LlmConfig(num_layers=8, hidden_size=64, num_heads=4, num_kv_heads=4, intermediate_size=192,
                      vocab_size=SCENE_VOCAB_SIZE, max_position_embeddings=1024)
REPRO_CLIP = VisionConfig(image_size=80, patch_size=8, hidden_size=128, num_layers=4, num_heads=4,
                          intermediate_size=512)
register_variant(ModelConfig(name="cpu-repro-llava", family="llava", llm=REPRO_LLM, vision=REPRO_CLIP,
                             tokenizer="scenes"))
# The same with the LM head tied to the input embedding (the quick preset's model): at the quick budget the untied
# model never picked an option's letter reliably enough for MMBench's circular score (four rotations all right);
# tied, copying the letter from the options is one attention move (results/reproduction/dense_sweep.md).
register_variant(ModelConfig(name="cpu-repro-llava-tied", family="llava", tokenizer="scenes", vision=REPRO_CLIP,
                             llm=dataclasses.replace(REPRO_LLM, tie_word_embeddings=True)))
# LLaVA-HR-shaped (`modbench reproduce --preset quick-hr`): the same LLM and CLIP tower (80 px -> 100 tokens) plus
# LLaVA-HR's slow branch, a small ConvNeXt on the images drawn at 320 px, joined by the resolution adapters after
# each CLIP quarter and the final fusion, as LLaVA-HR joins CLIP at 448 px and ConvNeXt at 1024 px.
REPRO_HR_VISION = dataclasses.replace(REPRO_CLIP, input_image_size=320, convnext=ConvNextConfig(
    depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], head_hidden_size=0, timm_name=""))
register_variant(ModelConfig(name="cpu-repro-llava-hr", family="llava-hr", llm=REPRO_LLM, vision=REPRO_HR_VISION,
                             tokenizer="scenes"))
# The reproduction's smoke-test size (`modbench reproduce --preset micro`, the test suite): the same family and
# tokenizer, tiny dims (not one of the hosts' tiny twins of the bench slice).
register_variant(ModelConfig(
    name="cpu-repro-llava-micro", family="llava", tokenizer="scenes",
    llm=dataclasses.replace(REPRO_LLM, num_layers=6, hidden_size=32, num_heads=2, num_kv_heads=2, intermediate_size=64),
    vision=dataclasses.replace(REPRO_CLIP, image_size=32, hidden_size=32, num_layers=2, num_heads=2,
                               intermediate_size=64)))
