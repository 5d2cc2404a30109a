"""Loading (and, for tests and tiny fixtures, writing) the authors' released checkpoint layouts: the generic IO.

What differs per host (key prefixes, which config.json it is, its vision fields) is declared by each host
family's module and looked up in models/hosts.py; nothing here names a family. The family is picked from
config.json (model_type and the fields a family claims, e.g. is_multipath_encoder or image_aspect_ratio
anyres), never from the directory name; llava-hf's "llava" / "llava_next" (nested text_config) are read too.

Weights: pytorch_model.bin or model.safetensors, single or sharded with an index json. Missing or unexpected
keys are an error that lists them; γ-MoD's router, repeated per MoD layer, must be identical in every copy.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path

import torch

from .clip import KNOWN_CLIP_TOWERS, clip_dims
from .config import (
    DTYPES,
    ConfigError,
    LlmConfig,
    ModelConfig,
    VisionConfig,
)
from .hosts import CheckpointError, ConfigSource, HostFamily, KeyLayout, host_families, host_family
from .routing import scheme_class

HF_LLAVA_KIND = "hf-llava"  # the layout name of every llava-hf checkpoint (the family comes from its model_type)


# ---------------------------------------------------------------------------------------------------------
# key layouts: each host family's module declares its own (models/hosts.py); renaming here is generic.

# A parameter directly on a ConvNeXt block (conv_dw, norm, mlp are submodules): only the layer scale.
CONVNEXT_BLOCK_PARAM = re.compile(r"(stages\.\d+\.blocks\.\d+\.)([A-Za-z_]\w*)$")


def to_hf_state_dict(state: dict, family: str) -> dict:
    """Our state dict of a `family` model in its transformers (llava-hf) names (parity tests)."""
    hf = host_family(family).hf
    if hf is None:
        raise ValueError(f"family {family!r} has no transformers layout")
    out, unmatched = _rename(state, hf.layout)
    if unmatched:
        raise KeyError(f"no transformers {hf.model_type} key for {unmatched[:5]}")
    return out


def _rename(state: dict, layout: KeyLayout, reverse: bool = False) -> tuple[dict, list[str]]:
    """Ours -> theirs (or back with `reverse`); keys no prefix matches are returned unmatched."""
    old_scale, new_scale = (layout.layer_scale, "gamma") if reverse else ("gamma", layout.layer_scale)
    out, unmatched = {}, []
    for key, value in state.items():
        for ours, theirs in layout.prefixes:
            src, dst = (theirs, ours) if reverse else (ours, theirs)
            if key.startswith(src):
                renamed = dst + key[len(src):]
                block_param = CONVNEXT_BLOCK_PARAM.search(renamed)
                if block_param and block_param.group(2) == old_scale:
                    renamed = renamed[: block_param.start(2)] + new_scale
                out[renamed] = value
                break
        else:
            unmatched.append(key)
    return out, unmatched


def _check_layer_scale(state: dict, layout: KeyLayout, where: Path) -> None:
    """A ConvNeXt layer scale under another name than the release's is an error naming both forms."""
    found = sorted({m.group(2) for m in map(CONVNEXT_BLOCK_PARAM.search, state) if m} - {layout.layer_scale})
    if found:
        example = next(k for k in state if (m := CONVNEXT_BLOCK_PARAM.search(k)) and m.group(2) == found[0])
        raise CheckpointError(
            f"{where}: ConvNeXt layer-scale keys named {', '.join(repr(n) for n in found)} (e.g. {example}); "
            f"{layout.name} checkpoints name them {layout.layer_scale!r}")


# ---------------------------------------------------------------------------------------------------------
# reading files


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt JSON ({exc})") from None


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: weight file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Single or sharded .safetensors / .bin, whichever the directory holds (safetensors first)."""
    files, weight_map = _weight_files(directory)
    state = {}
    for path in files:
        tensors = _load_file(path)
        if weight_map is not None:
            missing = [k for k, shard in weight_map.items() if directory / shard == path and k not in tensors]
            if missing:
                raise CheckpointError(f"{path}: keys listed in the index json are absent: {missing[:5]}")
        state.update(tensors)
    return state


def _weight_files(directory: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The files holding a checkpoint's weights, safetensors first: the shards an index json names (and its
    weight_map, key -> shard), or the single file (and None)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = directory / index_name
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map'")
            return [directory / shard for shard in sorted(set(weight_map.values()))], weight_map
        if (directory / single).exists():
            return [directory / single], None
    raise CheckpointError(f"{directory}: no model.safetensors, pytorch_model.bin or their index json")


def weight_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Every weight's name and shape, from the files' headers: a safetensors header, or a .bin's pickle with its
    storages mapped to the meta device. No tensor data is read (a 13B checkpoint's sizes cost milliseconds)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in _weight_files(directory)[0]:
        if not path.exists():
            raise CheckpointError(f"{path}: weight file not found")
        try:
            if path.suffix == ".safetensors":
                with path.open("rb") as handle:
                    size = int.from_bytes(handle.read(8), "little")
                    header = json.loads(handle.read(size))
                shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
            else:
                tensors = torch.load(path, map_location="meta", weights_only=True, mmap=True)
                shapes.update({k: tuple(v.shape) for k, v in tensors.items()})
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read the weights' names and shapes "
                                  f"({type(exc).__name__}: {exc})") from None
    return shapes


def checkpoint_directory(path_or_hub_id: str) -> Path:
    """A local directory, or a hub id found in the local HF cache (never downloads)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path_or_hub_id.count("/") == 1 and not path.exists():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(path_or_hub_id, local_files_only=True))
        except Exception:
            raise CheckpointError(
                f"{path_or_hub_id}: not a directory, and not in the local Hugging Face cache (offline: "
                "download it on a connected machine, or pass the checkpoint directory)") from None
    raise CheckpointError(f"{path_or_hub_id}: no such checkpoint directory")


# ---------------------------------------------------------------------------------------------------------
# config.json -> ModelConfig


def _llm_from(cfg: dict, where: Path) -> LlmConfig:
    try:
        return LlmConfig(
            num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"], num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    except KeyError as exc:
        raise CheckpointError(f"{where}: missing key {exc}") from None


def _clip_dims(name: str, directory: Path) -> dict:
    if name in KNOWN_CLIP_TOWERS:
        return KNOWN_CLIP_TOWERS[name]
    local = Path(name) if Path(name).is_absolute() else directory / name
    conf = read_json(local / "config.json") if (local / "config.json").exists() else None
    if conf is None:
        raise CheckpointError(f"{directory / 'config.json'}: mm_vision_tower {name!r} is neither a known tower nor "
                              "a directory with a config.json")
    return clip_dims(conf)


def _supported() -> str:
    families = host_families().values()
    authors = sorted({release.model_type for family in families for release in family.releases.values()})
    hf = sorted({family.hf.model_type for family in families if family.hf is not None})
    return f"{', '.join(authors)}, {' / '.join(hf)} (llava-hf)"


def detect(conf: dict, where: Path) -> str:
    """The layout: the authors' model_type, or HF_LLAVA_KIND for transformers' nested configs."""
    model_type = conf.get("model_type")
    families = host_families().values()
    if "text_config" in conf and any(f.hf is not None and f.hf.model_type == model_type for f in families):
        return HF_LLAVA_KIND
    if any(release.model_type == model_type for f in families for release in f.releases.values()):
        return model_type
    raise CheckpointError(f"{where}: unknown model_type {model_type!r}; supported: {_supported()}")


def release_of(conf: dict, kind: str, where: Path) -> tuple[HostFamily, str]:
    """(host family, routing scheme) of a config.json in layout `kind`. Of the families released under its
    model_type, the one that claims it (from fields such as is_multipath_encoder), else the one claiming none."""
    families = host_families().values()
    if kind == HF_LLAVA_KIND:
        return next(f for f in families if f.hf is not None and f.hf.model_type == conf["model_type"]), "dense"
    candidates = [(family, scheme) for family in families for scheme, release in family.releases.items()
                  if release.model_type == kind]
    claimed = [c for c in candidates if c[0].claims is not None and c[0].claims(conf)]
    if len(claimed) > 1:
        raise CheckpointError(f"{where}: config.json fits the {' and the '.join(f.name for f, _ in claimed)} "
                              "layouts at once")
    fallback = [c for c in candidates if c[0].claims is None]
    if not claimed and not fallback:
        raise CheckpointError(f"{where}: no host family claims this {kind} config.json "
                              f"(families released as {kind}: {sorted({f.name for f, _ in candidates})})")
    return (claimed or fallback)[0]


def release_layout(cfg: ModelConfig) -> str:
    """The layout (model_type) a model is written in: its host family's release of its scheme."""
    return host_family(cfg.family).release(cfg.mod.scheme).model_type


def config_from_checkpoint(directory: Path, shapes: dict[str, tuple[int, ...]] | None = None
                           ) -> tuple[ModelConfig, str]:
    """The model config and layout from config.json; the only sizes config.json does not give, LLaVA-HR's and
    Mini-Gemini's ConvNeXt, from the weights' names and shapes (`shapes`, else read from the files' headers)."""
    where = directory / "config.json"
    conf = read_json(where)
    kind = detect(conf, where)
    family, scheme = release_of(conf, kind, where)
    if kind == HF_LLAVA_KIND:
        text = dict(conf["text_config"])
        if "tie_word_embeddings" in conf:  # transformers' LlavaConfig keeps it at the top level
            text["tie_word_embeddings"] = conf["tie_word_embeddings"]
        vision = VisionConfig(select_layer=conf.get("vision_feature_layer", -2), **clip_dims(conf["vision_config"]))
        family.hf.read_vision(vision, conf)
        return ModelConfig(name=directory.name, family=family.name, llm=_llm_from(text, where), vision=vision,
                           dtype=declared_dtype(conf)), kind
    llm = _llm_from(conf, where)
    dims = _clip_dims(conf.get("mm_vision_tower") or conf.get("vision_tower", ""), directory)
    vision = VisionConfig(select_layer=conf.get("mm_vision_select_layer", -2), **dims)
    read_shapes = cache(lambda: weight_shapes(directory) if shapes is None else shapes)
    family.read_vision(vision, ConfigSource(conf, directory, read_shapes))
    mod = scheme_class(scheme).spec_from_config_json(conf, llm.num_layers, where)
    try:
        cfg = ModelConfig(name=directory.name, family=family.name, llm=llm, vision=vision, mod=mod,
                          dtype=declared_dtype(conf))
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    return cfg, kind


def declared_dtype(conf: dict) -> str:
    """The dtype the checkpoint says it holds (torch_dtype, or transformers 5's dtype; llava-hf nests it in
    text_config), as transformers 5 loads by default; float32 when it says none we know."""
    for source in (conf, conf.get("text_config") or {}):
        value = source.get("torch_dtype") or source.get("dtype")
        if value in DTYPES:
            return value
    return "float32"


# ---------------------------------------------------------------------------------------------------------
# state-dict mapping


def _layout(cfg: ModelConfig, kind: str) -> KeyLayout:
    family = host_family(cfg.family)
    return family.hf.layout if kind == HF_LLAVA_KIND else family.layout


# Buffers that older transformers saved with the weights (Llama's rotary inv_freq, CLIP's position_ids); both
# are recomputed from the config, so they are dropped rather than reported as unexpected.
DERIVED_BUFFER_SUFFIXES = (".rotary_emb.inv_freq", ".embeddings.position_ids")


# our key names of a tied head and the embedding it shares
TIED_HEAD, TIED_EMBEDDING = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"


def from_authors_state(state: dict, cfg: ModelConfig, kind: str, where: Path) -> dict:
    state = {k: v for k, v in state.items() if not k.endswith(DERIVED_BUFFER_SUFFIXES)}
    routing = scheme_class(cfg.mod.scheme).routers_from_authors(state, cfg, where)
    if kind == HF_LLAVA_KIND:  # the hub's older names (transformers 4's), as the family's llava-hf layout lists them
        legacy = host_family(cfg.family).hf.legacy_prefixes
        state = {next((new + k[len(old):] for new, old in legacy if k.startswith(old)), k): v
                 for k, v in state.items()}
    layout = _layout(cfg, kind)
    _check_layer_scale(state, layout, where)
    ours, unmatched = _rename(state, layout, reverse=True)
    if unmatched:
        raise CheckpointError(f"{where}: unexpected keys: {sorted(unmatched)[:20]}")
    ours.update(routing)
    if cfg.llm.tie_word_embeddings and TIED_HEAD not in ours and TIED_EMBEDDING in ours:
        ours[TIED_HEAD] = ours[TIED_EMBEDDING]
    return ours


def to_authors_state(model, kind: str) -> dict:
    """Our state dict in the authors' key names: the host family's layout, the scheme's routers."""
    cfg = model.cfg
    state = {k: v for k, v in model.state_dict().items() if ".routing." not in k}
    if cfg.llm.tie_word_embeddings:  # a tied head is written once, as the embedding (transformers' convention)
        del state[TIED_HEAD]
    theirs, unmatched = _rename(state, _layout(cfg, kind))
    if unmatched:
        raise KeyError(f"no {kind} key for {unmatched[:5]}")
    scheme_class(cfg.mod.scheme).routers_to_authors(theirs, model)
    return theirs


def authors_config(model, kind: str, vision_tower: str) -> dict:
    """config.json as the authors write it (the fields our loader and their builders read)."""
    cfg = model.cfg
    llm = cfg.llm
    family = host_family(cfg.family)
    release = family.release(cfg.mod.scheme)
    if kind != release.model_type:
        raise ValueError(f"{cfg.mod.scheme} on {family.name} is released as {release.model_type!r}, not {kind!r}")
    base = {
        "architectures": [release.architecture],
        "model_type": kind, "hidden_size": llm.hidden_size, "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_layers, "num_attention_heads": llm.num_heads,
        "num_key_value_heads": llm.num_kv_heads, "vocab_size": llm.vocab_size, "rms_norm_eps": llm.rms_norm_eps,
        "rope_theta": llm.rope_theta, "max_position_embeddings": llm.max_position_embeddings,
        "hidden_act": "silu", "tie_word_embeddings": llm.tie_word_embeddings, "torch_dtype": cfg.dtype,
        "mm_vision_tower": vision_tower, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": cfg.vision.select_layer, "mm_vision_select_feature": "patch",
        "mm_hidden_size": cfg.vision.hidden_size, "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
    }
    base.update(family.write_vision(cfg))
    base.update(scheme_class(cfg.mod.scheme).config_json_fields(cfg))
    return base


def save_authors_checkpoint(model, directory: str | os.PathLike, kind: str, fmt: str = "bin",
                            shards: int = 1) -> Path:
    """Write `model` as the authors' release would hold it (config.json, weights, tokenizer, CLIP config)."""
    from safetensors.torch import save_file

    from .clip import clip_vision_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vision_tower").mkdir(exist_ok=True)
    clip_vision_config(model.cfg.vision).save_pretrained(directory / "vision_tower")
    (directory / "config.json").write_text(json.dumps(authors_config(model, kind, "vision_tower"), indent=2))
    state = {k: v.contiguous() for k, v in to_authors_state(model, kind).items()}
    keys = sorted(state)
    chunks = [keys[i::shards] for i in range(shards)]
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if ext == "safetensors" else "pytorch_model"
    names = [f"{stem}.{ext}"] if shards == 1 else [f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}" for i in range(shards)]
    for name, chunk in zip(names, chunks):
        part = {k: state[k] for k in chunk}
        if ext == "safetensors":
            save_file(part, str(directory / name))
        else:
            torch.save(part, directory / name)
    if shards > 1:
        index = {"metadata": {}, "weight_map": {k: name for name, chunk in zip(names, chunks) for k in chunk}}
        (directory / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))
    model.tokenizer.save_pretrained(directory)
    return directory


def load(path_or_hub_id: str, dtype: str | None = None, device_map: str | None = None,
         config: ModelConfig | None = None):
    """Load a checkpoint directory (or a locally cached hub id) into a ModVlm, tokenizer included. `config`: the
    checkpoint's config as `models.resolver.resolve` gave it (with its overrides), else read here."""
    from transformers import AutoTokenizer, PretrainedConfig

    from . import torch_dtype
    from .vlm import ModVlm

    directory = checkpoint_directory(path_or_hub_id)
    conf = read_json(directory / "config.json")
    kind = detect(conf, directory / "config.json")
    state = read_state_dict(directory)
    _check_finite(state, directory)
    cfg = config if config is not None else config_from_checkpoint(
        directory, {k: tuple(v.shape) for k, v in state.items()})[0]
    scheme_class(cfg.mod.scheme).check_checkpoint(conf, cfg, state, directory / "config.json")
    if dtype:
        cfg.dtype = dtype
    try:
        # The tokenizer's own files name its class; an empty config keeps AutoTokenizer from reading config.json,
        # whose model_type (mod_llava_llama, ...) transformers does not know and warns about on every load.
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, config=PretrainedConfig())
    except Exception as exc:
        raise CheckpointError(f"{directory}: no usable tokenizer ({type(exc).__name__}: {exc})") from None
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary, ids) real
        model = ModVlm(cfg, tokenizer)
    ours = from_authors_state(state, cfg, kind, directory)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{directory}: missing keys {missing[:20]}; unexpected keys {unexpected[:20]}")
    for key, value in ours.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{directory}: shape mismatch for {key}: checkpoint {tuple(value.shape)}, "
                                  f"model {tuple(expected[key].shape)}")
    model.load_state_dict(ours, strict=True, assign=True)
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.placed(device_map or "cpu", torch_dtype(cfg.dtype)).eval()
    cast = {k: v for k, v in model.state_dict().items() if k in ours and v.dtype != ours[k].dtype}
    _check_finite(cast, directory, f" after the cast to {cfg.dtype} (out of its range)")
    return model


def _check_finite(state: dict, where: Path, after: str = "") -> None:
    """NaN / inf weights are an error naming the key: otherwise a NaN surfaces far away (a NaN γ-MoD router
    reads as "router copies differ", NaN == NaN being false) or not at all (every answer "")."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            nan, total = int(value.isnan().sum()), int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{where}: weight {key} holds non-finite values{after} ({nan} NaN, "
                                  f"{total - nan} inf of {value.numel()})")
