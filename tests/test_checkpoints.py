"""Checkpoints written in the authors' layouts by our code load back through the public loader."""

import json

import pytest
import torch

from modbench import models
from modbench.models.checkpoints import CheckpointError, save_authors_checkpoint


def logits(model, prompts, images):
    with torch.no_grad():
        return model(prompts, images).logits


@pytest.mark.parametrize("variant, kind, fmt, shards", [
    ("tiny-llava", "llava", "bin", 1),
    ("tiny-llava-gmod", "mod_llava_llama", "bin", 1),
    ("tiny-llava-pmod", "pmod_llava_llama", "safetensors", 3),
    ("tiny-llava-hr", "llava", "bin", 1),
    ("tiny-llava-hr-gmod", "mod_llava_llama", "bin", 2),
    ("tiny-llava-next", "llava", "safetensors", 1),
    ("tiny-pmod-llava-next", "pmod_llava_llama", "bin", 2),
    ("tiny-mgm-hd", "mgm", "safetensors", 2),
    ("tiny-mgm-hd-gmod", "mod_mgm", "bin", 1),
])
def test_round_trip_through_the_authors_layout(variant, kind, fmt, shards, tmp_path, prompts, images):
    model = models.build_model(variant)
    if model.cfg.mod.scheme == "pmod":  # a trained router, so the mapping of its weights is visible
        for router in model.language_model.model.routing.routers.values():
            torch.nn.init.normal_(router.router.weight, std=0.3)
    save_authors_checkpoint(model, tmp_path / "ckpt", kind, fmt=fmt, shards=shards)
    conf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert conf["model_type"] == kind
    loaded = models.load(str(tmp_path / "ckpt"))
    assert loaded.cfg.mod.scheme == model.cfg.mod.scheme and loaded.cfg.family == model.cfg.family
    assert sorted(loaded.cfg.mod.layers) == sorted(model.language_model.model.routing.mod_layers)
    torch.testing.assert_close(logits(loaded, prompts, images), logits(model, prompts, images))


def test_directory_name_does_not_decide_the_family(tmp_path, prompts, images):
    model = models.build_model("tiny-llava-gmod")
    save_authors_checkpoint(model, tmp_path / "llava-v1.5-7b-dense", "mod_llava_llama")
    assert models.load(str(tmp_path / "llava-v1.5-7b-dense")).cfg.mod.scheme == "gamma"


def save_tiny_llava_hf(folder, tied: bool = False):
    """tiny-llava saved by transformers' LlavaForConditionalGeneration (the llava-hf layout) into `folder`;
    `tied`: its LM head tied to the embedding (transformers keeps that flag at LlavaConfig's top level)."""
    import dataclasses

    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from modbench.models.checkpoints import to_hf_state_dict
    from modbench.models.clip import clip_vision_config
    from modbench.models.core import llama_config

    cfg = models.get_variant("tiny-llava")
    model = models.build_model(dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, tie_word_embeddings=tied)))
    hf = LlavaForConditionalGeneration(LlavaConfig(
        text_config=llama_config(model.cfg).to_dict(), vision_config=clip_vision_config(model.cfg.vision).to_dict(),
        image_token_id=model.image_token_id, vision_feature_layer=-2, projector_hidden_act="gelu",
        tie_word_embeddings=tied))
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg.family))
    hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return model


def test_hf_llava_layout(tmp_path, prompts, images):
    model = save_tiny_llava_hf(tmp_path / "hf")
    loaded = models.load(str(tmp_path / "hf"))
    torch.testing.assert_close(logits(loaded, prompts, images), logits(model, prompts, images))


def test_a_tied_hf_llava_checkpoint_loads_tied(tmp_path, prompts, images):
    """transformers writes a tied head once (no lm_head key) and the flag at LlavaConfig's top level; the hub's
    llava-hf configs carry a text_config of its non-default fields only, so the top level is where it is read."""
    model = save_tiny_llava_hf(tmp_path / "hf", tied=True)
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert conf["tie_word_embeddings"] is True
    del conf["text_config"]["tie_word_embeddings"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(conf))
    loaded = models.load(str(tmp_path / "hf"))
    lm = loaded.language_model
    assert loaded.cfg.llm.tie_word_embeddings and lm.lm_head.weight is lm.model.embed_tokens.weight
    torch.testing.assert_close(logits(loaded, prompts, images), logits(model, prompts, images))


@pytest.fixture
def gmod_dir(tmp_path):
    save_authors_checkpoint(models.build_model("tiny-llava-gmod"), tmp_path / "g", "mod_llava_llama", shards=2)
    return tmp_path / "g"


def test_missing_shard(gmod_dir):
    (gmod_dir / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin: weight file not found"):
        models.load(str(gmod_dir))


def test_shape_mismatch(gmod_dir):
    path = gmod_dir / "pytorch_model-00001-of-00002.bin"
    state = torch.load(path, weights_only=True)
    key = next(k for k in state if k.endswith("mlp.up_proj.weight"))
    state[key] = state[key][:-1]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=f"shape mismatch for .*{key.split('model.')[-1]}"):
        models.load(str(gmod_dir))


def test_router_copies_that_differ(gmod_dir):
    path = next(p for p in gmod_dir.glob("pytorch_model-*.bin")
                if any(k.endswith("router.weight") for k in torch.load(p, weights_only=True)))
    state = torch.load(path, weights_only=True)
    key = next(k for k in state if k.endswith("router.weight"))
    state[key] = state[key] + 1
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="router copies differ"):
        models.load(str(gmod_dir))


def test_unknown_model_type_and_corrupt_json(gmod_dir):
    conf = gmod_dir / "config.json"
    data = json.loads(conf.read_text())
    conf.write_text(json.dumps({**data, "model_type": "qwen2_vl"}))
    with pytest.raises(CheckpointError, match="config.json: unknown model_type 'qwen2_vl'"):
        models.load(str(gmod_dir))
    conf.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: corrupt JSON"):
        models.load(str(gmod_dir))


def test_unexpected_key_is_listed(gmod_dir):
    path = gmod_dir / "pytorch_model-00001-of-00002.bin"
    state = torch.load(path, weights_only=True)
    state["model.extra_head.weight"] = torch.zeros(2)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: \['model.extra_head.weight'\]"):
        models.load(str(gmod_dir))


def test_hub_id_not_in_cache_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        models.load("YaxinLuo/Gamma-MoD-llava-hr-7b-0.34")


def test_hf_llava_next_layout(tmp_path, prompts, images):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    from modbench.models.checkpoints import to_hf_state_dict
    from modbench.models.core import llama_config
    from modbench.models.llava import clip_vision_config

    model = models.build_model("tiny-llava-next")
    cfg = model.cfg
    hf = LlavaNextForConditionalGeneration(LlavaNextConfig(
        text_config=llama_config(cfg).to_dict(), vision_config=clip_vision_config(cfg.vision).to_dict(),
        image_token_index=model.image_token_id, image_grid_pinpoints=cfg.vision.grid_pinpoints,
        vision_feature_layer=-2, projector_hidden_act="gelu"))
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg.family))
    hf.save_pretrained(tmp_path / "hf", max_shard_size="200KB")  # sharded safetensors with an index
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    model.tokenizer.save_pretrained(tmp_path / "hf")
    loaded = models.load(str(tmp_path / "hf"))
    assert loaded.cfg.family == "llava-next"
    torch.testing.assert_close(logits(loaded, prompts, images), logits(model, prompts, images))


def test_missing_key_is_listed(gmod_dir):
    path = gmod_dir / "pytorch_model-00001-of-00002.bin"
    state = torch.load(path, weights_only=True)
    key = sorted(k for k in state if "mlp.up_proj" in k)[0]
    del state[key]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"index.json are absent: \['{key}'\]"):
        models.load(str(gmod_dir))
    index = gmod_dir / "pytorch_model.bin.index.json"  # consistent index, key gone: the model misses it
    data = json.loads(index.read_text())
    del data["weight_map"][key]
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"missing keys \['language_model.model.layers.1.mlp.up_proj.weight'\]"):
        models.load(str(gmod_dir))


def test_llava_hr_x_slow_tower_with_classifier_head(tmp_path, prompts, images):
    """The authors build ConvNeXt with timm's classifier (head.fc) and, for LLaVA-HR-X's convnext_xxlarge, no MLP
    head and LayerNorm eps 1e-5: all three are read back from the checkpoint and its config.json."""
    import dataclasses

    cfg = models.get_variant("tiny-llava-hr")
    conv = dataclasses.replace(cfg.vision.convnext, head_hidden_size=0, num_classes=7, norm_eps=1e-5,
                               timm_name="convnext_xxlarge.clip_laion2b_soup")
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, convnext=conv))
    model = models.build_model(cfg)
    state = model.state_dict()
    assert state["vision.vision_tower.slow_vision_tower.head.fc.weight"].shape == (7, conv.dims[-1])
    save_authors_checkpoint(model, tmp_path / "hrx", "llava")
    loaded = models.load(str(tmp_path / "hrx"))
    got = loaded.cfg.vision.convnext
    assert (got.num_classes, got.head_hidden_size, got.norm_eps) == (7, 0, 1e-5)
    torch.testing.assert_close(logits(loaded, prompts, images), logits(model, prompts, images))


def test_buffers_saved_by_older_transformers_are_dropped(tmp_path, prompts, images):
    """Checkpoints from transformers < 4.31 carry rotary inv_freq and CLIP position_ids; they are not weights."""
    model = models.build_model("tiny-llava-hr")
    save_authors_checkpoint(model, tmp_path / "old", "llava")
    state = torch.load(tmp_path / "old" / "pytorch_model.bin", weights_only=True)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    state["model.vision_tower.fast_vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(5)
    torch.save(state, tmp_path / "old" / "pytorch_model.bin")
    loaded = models.load(str(tmp_path / "old"))
    torch.testing.assert_close(logits(loaded, prompts, images), logits(model, prompts, images))


def _authors_sentencepiece_tokenizer(directory):
    """Replace our tokenizer files with the kind the authors ship: a SentencePiece tokenizer.model and a
    LlamaTokenizer tokenizer_config.json (no tokenizer.json). Trained here on a few lines; ids stay < 64."""
    import sentencepiece

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink(missing_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text("USER: What is in the image? ASSISTANT: a cat on a mat\n" * 20)
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "tokenizer"), vocab_size=40, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2)
    corpus.unlink()
    (directory / "tokenizer.vocab").unlink()
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "model_max_length": 2048, "padding_side": "right"}))
    return sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))


def test_authors_sentencepiece_tokenizer_loads(tmp_path, images):
    """The released checkpoints' tokenizer (SentencePiece, LlamaTokenizer) loads offline and tokenises as
    SentencePiece itself does; the model generates with it."""
    save_authors_checkpoint(models.build_model("tiny-llava-gmod"), tmp_path / "spm", "mod_llava_llama")
    reference = _authors_sentencepiece_tokenizer(tmp_path / "spm")
    loaded = models.load(str(tmp_path / "spm"))
    text = "What is in the image?"
    assert loaded.tokenizer(text).input_ids == [1] + reference.encode(text)
    out = loaded.generate(["USER: <image>\nWhat is in the image? ASSISTANT:"], images[:1], max_new_tokens=3)
    assert len(out["tokens"][0]) == 3


def test_dtype_defaults_to_what_the_checkpoint_declares(tmp_path):
    save_authors_checkpoint(models.build_model("tiny-llava"), tmp_path / "c", "llava")
    conf = json.loads((tmp_path / "c" / "config.json").read_text())
    assert conf["torch_dtype"] == "float32"
    (tmp_path / "c" / "config.json").write_text(json.dumps({**conf, "torch_dtype": "bfloat16"}))
    assert models.load(str(tmp_path / "c")).dtype == torch.bfloat16
    assert models.load(str(tmp_path / "c"), dtype="float32").dtype == torch.float32


def test_a_half_precision_model_keeps_ropes_frequencies_in_float32_as_transformers_does(tmp_path):
    """Rounded to half, RoPE's inverse frequencies move a late position's angle by radians; from_pretrained keeps
    them float32 in a float16 model, and so do a loaded and a built one here."""
    import dataclasses

    reference = models.build_model("tiny-llava")
    save_authors_checkpoint(reference, tmp_path / "c", "llava")
    freqs = {k: v for k, v in reference.named_buffers() if k.endswith("inv_freq")}
    assert freqs and all(v.dtype == torch.float32 for v in freqs.values())
    for half in ("float16", "bfloat16"):
        built = models.build_model(dataclasses.replace(models.get_variant("tiny-llava"), dtype=half))
        for model in (models.load(str(tmp_path / "c"), dtype=half), built):
            assert model.dtype == getattr(torch, half)
            buffers = dict(model.named_buffers())
            for name, value in freqs.items():
                assert buffers[name].dtype == torch.float32 and torch.equal(buffers[name], value), name


@pytest.mark.parametrize("tower", ["vision_tower.vision_model.", "model.vision_tower.vision_model."])
def test_a_llava_hf_checkpoint_of_transformers_4_loads(tower, tmp_path, prompts, images):
    """transformers 4's CLIPVisionModel nested the tower under `vision_model.` (5 flattened it): the llava-hf
    layout's legacy names (models/llava.py HF_LLAVA_LEGACY) read it under the hub's old and new tower names."""
    from safetensors.torch import load_file, save_file

    model = save_tiny_llava_hf(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(path))
    nested = {}
    for key, value in state.items():
        for saved in ("model.vision_tower.", "vision_tower."):
            if key.startswith(saved):
                key = tower + key[len(saved):]
                break
        nested[key] = value
    assert sum(k.startswith(tower) for k in nested) > 10
    save_file(nested, str(path), metadata={"format": "pt"})
    loaded = models.load(str(tmp_path / "hf"))
    torch.testing.assert_close(logits(loaded, prompts, images), logits(model, prompts, images))


def test_the_checkpoint_io_imports_no_family_module_and_names_no_familys_keys():
    """checkpoints.py is the generic IO (issue 16): it imports no host family's module (the CLIP tower's config
    comes from models/clip.py) and no string in its code holds a key name only some families' layouts use
    (LLaVA-HR's `fast_vision_tower`, LLaVA-NeXT's `image_newline`, llava-hf's `multi_modal_projector`, ...)."""
    import ast
    import re
    from pathlib import Path

    from modbench.models.hosts import BUILTIN_MODULES, host_families

    path = Path(__file__).resolve().parent.parent / "models" / "checkpoints.py"
    tree = ast.parse(path.read_text())
    families = host_families().values()
    modules = set(BUILTIN_MODULES) | {f.frontend.__module__ for f in families}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = ("modbench.models." if node.level == 1 else "") + (node.module or "")
            names = [module, *(f"{module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        assert not modules & set(names), f"checkpoints.py:{node.lineno} imports {sorted(modules & set(names))}"

    def key_parts(family) -> set[str]:
        pairs = list(family.layout.prefixes)
        if family.hf is not None:
            pairs += list(family.hf.layout.prefixes) + list(family.hf.legacy_prefixes)
        return {part for pair in pairs for prefix in pair for part in prefix.split(".") if part}

    parts = [key_parts(f) for f in families]
    specific = set().union(*parts) - set.intersection(*parts)
    assert {"fast_vision_tower", "image_newline", "multi_modal_projector"} <= specific
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            named = {p for p in specific if re.search(rf"(?<![\w]){re.escape(p)}(?![\w])", node.value)}
            assert not named, f"checkpoints.py:{node.lineno} names {sorted(named)} in {node.value!r}"
