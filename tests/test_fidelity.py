"""Fidelity to the authors' code (issue 12): pad colour, p-MoD config fields and schedule, kept count,
TanhNorm ranking, LLaVA-NeXT preprocessing, γ-MoD's routed set in training, full FLOPs of every host.

Where a test restates the authors' rule, it is written from their code (named in each test), not from ours."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from modbench import models
from modbench.models.checkpoints import CheckpointError, save_authors_checkpoint
from modbench.models.config import ConfigError, ModelConfig, ModSpec
from modbench.models.flops import flops_full_meta, tokens_per_layer, torch_flop_counter
from modbench.models.pmod import (
    PmodRouting,
    authors_schedule,
    format_target_layers,
    format_weight_norm,
    kept_count,
    parse_target_layers,
    parse_weight_norm,
    pmod_layers_and_ratios,
)
from modbench.models.prompt import vicuna_v1
from modbench.models.routing import IMAGE, QUESTION, RESPONSE, SYSTEM, RoutingContext
from modbench.models.variants import with_mod


def noise_image(width, height, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def clip_normalise(image: Image.Image, mean, std) -> torch.Tensor:
    """transformers 4.37 CLIPImageProcessor on an already CLIP-sized image: rescale (uint8 * 1/255 in float64,
    then float32), normalize ((x - mean) / std in float32)."""
    x = (np.asarray(image) * (1 / 255)).astype(np.float32)
    return torch.from_numpy((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).permute(2, 0, 1)


# --- 1. pad-to-square colour --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["tiny-llava", "tiny-llava-hr", "tiny-mgm-hd"])
def test_pad_colour_is_the_truncated_mean(variant):
    """haotian-liu/LLaVA, luogen1996/LLaVA-HR, dvlab-research/MGM mm_utils.py process_images:
    expand2square(image, tuple(int(x*255) for x in image_processor.image_mean)) -> (122, 116, 104) for CLIP."""
    model = models.build_model(variant)
    vision = model.cfg.vision
    fill = tuple(int(x * 255) for x in vision.image_mean)
    assert fill == (122, 116, 104)
    pixels = model.vision.preprocess([Image.new("RGB", (64, 8), (200, 30, 30))])  # 28 pad rows above
    expected = clip_normalise(Image.new("RGB", (1, 1), fill), vision.image_mean, vision.image_std)[:, 0, 0]
    corners = {"tiny-llava": lambda p: p[0, :, 0, 0], "tiny-llava-hr": lambda p: p[0, :, 0, 0],
               "tiny-mgm-hd": lambda p: p.high_res[0, :, 0, 0]}[variant](pixels)
    torch.testing.assert_close(corners, expected, rtol=0, atol=1e-6)
    if variant == "tiny-mgm-hd":  # the CLIP views are cut from the same padded image
        torch.testing.assert_close(pixels.views[0, 0, :, 0, 0], expected, rtol=0, atol=1e-6)


# --- 2. p-MoD schedule and every config.json field ----------------------------------------------------------
def authors_layers_and_ratios(target_layers: str, factor: float, num_layers: int):
    """MCG-NJU/p-MoD pmod_llava_llama.py build_mod_layers, shifted_cos_with_ratio, shifted_linear_with_ratio,
    restated: the decays divide by 31 whatever the depth."""
    funcs = {"shiftedcos": lambda f, i: math.cos(i * math.pi / 31) / 2 + f,
             "shiftedlinear": lambda f, i: (-i / 31 + 0.5) + f}
    if "_decay_" in target_layers:
        kind, rest = target_layers.split("_decay_")
        top, bottom = (float(v) for v in rest.split("_"))
        layers = [i for i in range(num_layers) if funcs[kind](factor, i) <= top]
        return layers, [max(funcs[kind](factor, i), bottom) for i in layers]
    layers = {"deep_all": list(range(2, num_layers - 1)), "deep_all_include_last": list(range(2, num_layers)),
              "interleave": list(range(1, num_layers, 2))}[target_layers]
    return layers, [factor] * len(layers)


PATTERNS = ["shiftedcos_decay_0.85_0.15", "shiftedlinear_decay_0.85_0.15", "shiftedcos_decay_0.75_0.25",
            "shiftedlinear_decay_0.9_0.1", "deep_all", "deep_all_include_last", "interleave"]


@pytest.mark.parametrize("num_layers", [8, 32, 40])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("factor", [0.5, 0.3])
def test_authors_schedule_for_every_pattern_and_depth(pattern, num_layers, factor):
    spec = ModSpec(scheme="pmod", pmod_router_factor=factor, **parse_target_layers(pattern))
    assert format_target_layers(spec) == pattern
    assert authors_schedule(spec, num_layers) == authors_layers_and_ratios(pattern, factor, num_layers)


def test_released_schedule_values():
    spec = ModSpec(scheme="pmod", **parse_target_layers("shiftedcos_decay_0.85_0.15"))
    layers, ratios = authors_schedule(spec, 32)
    assert layers == list(range(8, 32)) and ratios[-1] == 0.15 and round(ratios[0], 4) == 0.8445
    assert authors_schedule(spec, 8) == ([], [])  # the fixed divisor: no MoD layer in a shallow model
    layers40, ratios40 = authors_schedule(spec, 40)
    assert layers40 == list(range(8, 40)) and round(ratios40[-1], 4) == 0.1555  # cos turns back past l = 31
    # the suite's default (divisor L - 1) is the released schedule at 32 layers and has MoD layers at any depth
    assert pmod_layers_and_ratios(ModSpec(scheme="pmod"), 32) == (layers, ratios)
    assert pmod_layers_and_ratios(ModSpec(scheme="pmod"), 8)[0] == [2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("value, fields", [
    ("tanh_0.2_1", dict(pmod_weight_norm="tanh", pmod_norm_scale=0.2, pmod_norm_bias=1.0)),
    ("sigmoid_0.5_-0.25", dict(pmod_weight_norm="sigmoid", pmod_norm_scale=0.5, pmod_norm_bias=-0.25)),
    ("softmax_2_0", dict(pmod_weight_norm="softmax", pmod_norm_scale=2.0, pmod_norm_bias=0.0)),
    ("none", dict(pmod_weight_norm="none", pmod_norm_scale=1.0, pmod_norm_bias=1.0)),  # the release's fallback
])
def test_weight_norm_field(value, fields):
    assert parse_weight_norm(value) == fields
    assert parse_weight_norm(format_weight_norm(ModSpec(scheme="pmod", **fields))) == fields


@pytest.mark.parametrize("parse, value, field", [
    (parse_target_layers, "shiftedexp_decay_0.85_0.15", "mod_target_layers"),
    (parse_target_layers, "all_layers", "mod_target_layers"),
    (parse_target_layers, "shiftedcos_decay_1_0", "mod_target_layers"),  # the release needs decimals
    (parse_weight_norm, "relu_0.2_1", "mod_weight_norm"),
    (parse_weight_norm, None, "mod_weight_norm"),
])
def test_unknown_pattern_or_norm_names_the_field(parse, value, field):
    with pytest.raises(ConfigError, match=field):
        parse(value)


@pytest.mark.parametrize("field, value", [("pmod_pattern", "cosine"), ("pmod_weight_norm", "relu"),
                                          ("pmod_target_tokens", "all"), ("pmod_ranking", "raw"),
                                          ("pmod_decay_divisor", 0), ("pmod_router_factor", 0.0),
                                          ("pmod_norm_scale", 0.0)])
def test_spec_validation_names_the_field(field, value):
    cfg = with_mod(models.get_variant("tiny-llava"), "t", ModSpec(scheme="pmod", **{field: value}))
    with pytest.raises(ConfigError, match=f"mod.{field}"):  # p-MoD's own checks, where a config is built
        models.build_model(cfg)


def pmod_model(**mod):
    return models.build_model(with_mod(models.get_variant("tiny-llava"), "tiny-llava-pmod-x",
                                       ModSpec(scheme="pmod", **mod)))


def randomise_routers(model, std=0.3):
    generator = torch.Generator().manual_seed(1)
    for router in model.language_model.model.routing.routers.values():
        with torch.no_grad():
            router.router.weight.copy_(torch.randn(router.router.weight.shape, generator=generator) * std)
    return model


def logits(model, prompts, images):
    with torch.no_grad():
        return model(prompts, images).logits


def test_custom_schedule_round_trips(tmp_path, prompts, images):
    """A p-MoD model of 6 layers with its own ratios: the release's fields cannot say them, so the writer adds
    the explicit mod_layers_idx / mod_ratios and the loader prefers them."""
    model = randomise_routers(pmod_model(layers=[2, 3, 4, 5], ratios=[0.8, 0.6, 0.4, 0.3]))
    save_authors_checkpoint(model, tmp_path / "ckpt", "pmod_llava_llama")
    conf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert conf["mod_layers_idx"] == [2, 3, 4, 5] and conf["mod_ratios"] == [0.8, 0.6, 0.4, 0.3]
    loaded = models.load(str(tmp_path / "ckpt"))
    assert (loaded.cfg.mod.layers, loaded.cfg.mod.ratios) == ([2, 3, 4, 5], [0.8, 0.6, 0.4, 0.3])
    assert loaded.language_model.model.routing.ratios == model.language_model.model.routing.ratios
    torch.testing.assert_close(logits(loaded, prompts, images), logits(model, prompts, images))


def test_default_schedule_of_a_shallow_model_round_trips(tmp_path):
    model = pmod_model()  # the depth-scaled decay: layers 2-5 of 6
    save_authors_checkpoint(model, tmp_path / "ckpt", "pmod_llava_llama")
    loaded = models.load(str(tmp_path / "ckpt"))
    assert pmod_layers_and_ratios(loaded.cfg.mod, 6) == pmod_layers_and_ratios(model.cfg.mod, 6)


def test_released_fields_written_as_the_release_does(tmp_path):
    """At 32 layers the default schedule is the released one: config.json holds only the release's fields."""
    cfg = models.get_variant("tiny-llava")
    cfg = dataclasses.replace(cfg, name="tiny32", llm=dataclasses.replace(cfg.llm, num_layers=32, hidden_size=16,
                                                                          intermediate_size=32),
                              mod=ModSpec(scheme="pmod"))
    model = models.build_model(ModelConfig.from_dict(cfg.to_dict()))
    save_authors_checkpoint(model, tmp_path / "ckpt", "pmod_llava_llama")
    conf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert {k: conf[k] for k in conf if k.startswith("mod_")} == {
        "mod_target_layers": "shiftedcos_decay_0.85_0.15", "mod_target_token_type": "vision_all",
        "mod_router_factor": 0.5, "mod_weight_norm": "tanh_0.2_1", "mod_bias_enabled": True,
        "mod_special_init": True, "mod_target_layer_indices": list(range(8, 32))}
    loaded = models.load(str(tmp_path / "ckpt"))
    assert pmod_layers_and_ratios(loaded.cfg.mod, 32) == pmod_layers_and_ratios(model.cfg.mod, 32)


def edit_checkpoint(directory, conf_update=None, state_edit=None):
    conf = json.loads((directory / "config.json").read_text())
    conf.update(conf_update or {})
    for key in [k for k, v in conf.items() if v is None]:
        del conf[key]
    (directory / "config.json").write_text(json.dumps(conf))
    if state_edit:
        path = directory / "pytorch_model.bin"
        state = torch.load(path, weights_only=True)
        state_edit(state)
        torch.save(state, path)


def test_loader_reads_every_field(tmp_path, prompts, images):
    """A checkpoint as the release would write it with other settings: pattern interleave (layers 1, 3, 5 at
    factor 0.6), sigmoid norm, no router bias."""
    model = pmod_model(pmod_pattern="interleave", pmod_router_factor=0.6, pmod_weight_norm="sigmoid",
                       pmod_norm_scale=0.5, pmod_norm_bias=0.75, pmod_router_bias=False)
    randomise_routers(model)
    save_authors_checkpoint(model, tmp_path / "ckpt", "pmod_llava_llama")
    conf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert (conf["mod_target_layers"], conf["mod_weight_norm"], conf["mod_bias_enabled"]) == (
        "interleave", "sigmoid_0.5_0.75", False)
    assert "mod_ratios" not in conf and conf["mod_target_layer_indices"] == [1, 3, 5]
    loaded = models.load(str(tmp_path / "ckpt"))
    mod = loaded.cfg.mod
    assert (mod.layers, mod.ratios, mod.pmod_weight_norm, mod.pmod_norm_scale, mod.pmod_norm_bias) == (
        [1, 3, 5], [0.6] * 3, "sigmoid", 0.5, 0.75)
    assert loaded.language_model.model.routing.routers["1"].router.bias is None
    torch.testing.assert_close(logits(loaded, prompts, images), logits(model, prompts, images))


@pytest.mark.parametrize("update, message", [
    ({"mod_weight_norm": "gelu_0.2_1"}, "mod_weight_norm"),
    ({"mod_target_layers": "every_other"}, "mod_target_layers"),
    ({"mod_target_token_type": "all"}, "mod_target_token_type"),
    ({"mod_target_layers": "deep_all"}, r"mod_target_layer_indices \[1, 3, 5\] differs"),  # 2, 3, 4
    ({"mod_target_layers": "deep_all", "mod_target_layer_indices": None}, r"routers at layers \[1, 3, 5\]"),
    ({"mod_target_layer_indices": [1, 3]}, "mod_target_layer_indices"),
    ({"mod_bias_enabled": None}, "mod_bias_enabled"),
])
def test_loader_refuses_unknown_or_inconsistent_fields(update, message, tmp_path):
    model = pmod_model(pmod_pattern="interleave")
    save_authors_checkpoint(model, tmp_path / "ckpt", "pmod_llava_llama")
    edit_checkpoint(tmp_path / "ckpt", update)
    with pytest.raises(CheckpointError, match=message):
        models.load(str(tmp_path / "ckpt"))


def test_vision_hr_leaves_the_base_view_dense(images):
    """llava_arch.py prepare_inputs_labels_for_multimodal_mod: with vision_hr only the anyres tiles (and their
    newlines) are MoD targets, the base view's tokens are not."""
    model = models.build_model(with_mod(models.get_variant("tiny-llava-next"), "t",
                                        ModSpec(scheme="pmod", pmod_target_tokens="vision_hr")))
    prompt = vicuna_v1("What colour is the shape?")
    with torch.no_grad():
        out = model([prompt], images[:1], collect_stats=True)
    vision = model.cfg.vision
    base = (vision.image_size // vision.patch_size) ** 2
    n_image = int(out.total[0, 0, IMAGE])
    for layer, ratio in model.language_model.model.routing.ratios.items():
        assert int(out.kept[0, layer, IMAGE]) == base + kept_count(n_image - base, ratio)


# --- 3. kept count in float32 ---------------------------------------------------------------------------------
def test_kept_count_is_float32_trunc():
    """pmod_llava_llama.py ModLayer.forward: torch.trunc(mod_target_lengths * self.mod_router_factor).int(),
    an int32 tensor times a Python float, i.e. a float32 product."""
    layers, ratios = pmod_layers_and_ratios(ModSpec(scheme="pmod"), 32)
    n = torch.arange(1, 5001, dtype=torch.int32)
    for ratio in ratios:
        assert torch.equal(kept_count(n, ratio), torch.trunc(n * ratio).int().long())
    ratio = dict(zip(layers, ratios))[10]
    assert math.floor(2365 * ratio) == 1807 and kept_count(2365, ratio) == 1808 == int(kept_count(torch.tensor([2365]), ratio))


def test_routing_and_flops_keep_the_float32_count():
    cfg = models.get_variant("tiny-llava")
    cfg = dataclasses.replace(cfg, name="tiny32", llm=dataclasses.replace(cfg.llm, num_layers=32),
                              mod=ModSpec(scheme="pmod"))
    routing = PmodRouting(cfg)
    n_text, n_image = 5, 2365
    types = torch.tensor([[SYSTEM] * n_text + [IMAGE] * n_image])
    hidden = torch.zeros(1, n_text + n_image, cfg.llm.hidden_size)
    route = routing.route(10, hidden, hidden, RoutingContext(token_types=types, training=False))
    assert int(route.keep[0, n_text:].sum()) == 1808
    assert tokens_per_layer(cfg, n_text + n_image, image_tokens=n_image)[10] == n_text + 1808


# --- 4. TanhNorm before top-k: the released ranking --------------------------------------------------------
@pytest.mark.parametrize("ranking", ["released", "vision_only"])
def test_released_ranking_lets_text_take_a_slot(ranking, prompts, images):
    """pmod_llava_llama.py: router_logits[~mod_target_mask] = -inf, then weight_normalization (w = 0.2 tanh + 1),
    then topk on w over the whole row: text has w = 0.8, as has a router saturated negative (tanh(-20) = -1)."""
    model = pmod_model(pmod_ranking=ranking)
    for router in model.language_model.model.routing.routers.values():
        torch.nn.init.constant_(router.router.bias, -20.0)
    with torch.no_grad():
        out = model(prompts[:1], images[:1], collect_stats=True)
    routing = model.language_model.model.routing
    n_image, n_system = int(out.total[0, 0, IMAGE]), int(out.total[0, 0, SYSTEM])
    for layer, ratio in routing.ratios.items():
        k = kept_count(n_image, ratio)
        # released: every real position ties at 0.8, the earliest win, and the system prompt comes first
        expected = max(0, k - n_system) if ranking == "released" else k
        assert int(out.kept[0, layer, IMAGE]) == expected, layer
        assert int(out.kept[0, layer, SYSTEM]) == n_system  # text always runs


def test_rankings_agree_without_saturation(prompts, images):
    kept = {}
    for ranking in ("released", "vision_only"):
        model = randomise_routers(pmod_model(pmod_ranking=ranking), std=0.5)
        with torch.no_grad():
            kept[ranking] = model(prompts, images, collect_stats=True).kept
    assert torch.equal(kept["released"], kept["vision_only"])


# --- 5. LLaVA-NeXT: the authors' PIL preprocessing ----------------------------------------------------------
def authors_anyres_views(image: Image.Image, pinpoints_wh, size: int) -> list[Image.Image]:
    """haotian-liu/LLaVA llava/mm_utils.py process_anyres_image (kept by MCG-NJU/p-MoD), restated with PIL:
    select_best_resolution over (width, height) pinpoints, resize_and_pad_image, divide_to_patches, and the
    base view image.resize((336, 336)); Image.resize without a filter (PIL's default for RGB: bicubic)."""
    width, height = image.size
    best, best_effective, best_wasted = None, 0, float("inf")
    for w, h in pinpoints_wh:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (w, h), effective, wasted
    target_w, target_h = best
    if target_w / width < target_h / height:
        new_w, new_h = target_w, min(math.ceil(height * target_w / width), target_h)
    else:
        new_w, new_h = min(math.ceil(width * target_h / height), target_w), target_h
    padded = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    padded.paste(image.resize((new_w, new_h)), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    tiles = [padded.crop((j, i, j + size, i + size)) for i in range(0, target_h, size) for j in range(0, target_w, size)]
    return [image.resize((size, size))] + tiles


@pytest.mark.parametrize("size", [(50, 37), (37, 50), (70, 23), (90, 90), (20, 20), (33, 17)])
def test_llava_next_preprocessing_is_the_authors_pil_path(size):
    model = models.build_model("tiny-llava-next")
    vision = model.cfg.vision
    pinpoints_wh = [p[::-1] for p in vision.grid_pinpoints]  # as the authors' config.json lists them
    image = noise_image(*size, seed=sum(size))
    theirs = authors_anyres_views(image, pinpoints_wh, vision.image_size)
    ours = model.vision.views(image)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # pixel-exact
    pixels = model.vision.preprocess([image])
    expected = torch.stack([clip_normalise(v, vision.image_mean, vision.image_std) for v in theirs])
    assert torch.equal(pixels.pixel_values[0], expected)
    assert pixels.image_sizes.tolist() == [[size[1], size[0]]]


def test_llava_next_tie_takes_the_first_pinpoint_as_the_authors_read_it(tmp_path, tokenizer):
    """A small image ties between the 1x2 and 2x1 grids; the authors' list order, read as (width, height),
    decides. The loader turns their (width, height) entries into our [height, width]."""
    model = models.build_model("tiny-llava-next")
    assert model.vision.grid_shape(20, 20) == (1, 2)  # [32, 64] first: one row of two tiles
    save_authors_checkpoint(model, tmp_path / "ckpt", "llava")
    conf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert conf["image_grid_pinpoints"] == [[64, 32], [32, 64], [64, 64]]
    assert models.load(str(tmp_path / "ckpt")).cfg.vision.grid_pinpoints == model.cfg.vision.grid_pinpoints


# --- 6. γ-MoD's routed set in training ----------------------------------------------------------------------
def authors_training_keep(p: torch.Tensor, prefix: int) -> torch.Tensor:
    """Yaxin9Luo/Gamma-MOD gamma_mod/model/language_model/llava_llama_mod.py MoDLlamaDecoderLayer_forward:
    the first img_and_instruction_token_len (= 1024 + 35) positions are routable whatever they hold; the rest
    get +1; top_k = ceil(seq_len * (1 - prefix * 0.5 / seq_len)) tokens run."""
    batch, seq_len = p.shape
    mask = torch.cat([torch.zeros(batch, prefix), torch.ones(batch, seq_len - prefix)], dim=1)
    top_k = int(math.ceil(seq_len * (1 - (prefix * 0.5) / seq_len)))
    keep = torch.zeros(batch, seq_len, dtype=torch.bool)
    keep.scatter_(1, torch.topk(p + mask, top_k, dim=-1).indices, True)
    return keep


def gamma_training_keep(p, types):
    from modbench.models.gamma_mod import GammaModRouting

    return GammaModRouting.masked_top_k(p, RoutingContext(token_types=types, training=True), 0.5, "qa")


def test_gamma_training_routes_what_the_authors_route_on_llava_hr_layout():
    """LLaVA-HR's prompt: 35 system tokens, the 1024 image tokens, then question and answer."""
    generator = torch.Generator().manual_seed(0)
    types = torch.tensor([SYSTEM] * 35 + [IMAGE] * 1024 + [QUESTION] * 30 + [RESPONSE] * 7).repeat(3, 1)
    p = torch.rand(types.shape, generator=generator)
    assert torch.equal(gamma_training_keep(p, types), authors_training_keep(p, 35 + 1024))


def test_gamma_training_differs_from_the_authors_when_the_image_is_not_first():
    """Another layout (text before the image, as MMMU's interleaved prompts): the authors' first 1059 positions
    take question tokens and leave the last image tokens force-kept; we route system + image by type."""
    generator = torch.Generator().manual_seed(0)
    types = torch.tensor([SYSTEM] * 35 + [QUESTION] * 20 + [IMAGE] * 1024 + [QUESTION] * 10)[None]
    p = torch.rand(types.shape, generator=generator)
    ours, theirs = gamma_training_keep(p, types), authors_training_keep(p, 35 + 1024)
    assert int((~ours).sum()) == int((~theirs).sum()) == 529  # the same number skipped...
    assert not (~ours[0, 35:55]).any() and (~theirs[0, 35:55]).any()  # ...but they route question tokens
    assert not (~theirs[0, -10 - 20:-10]).any()  # and force-keep the last image tokens


# --- 7. flops --full: every component of every host ---------------------------------------------------------
@pytest.mark.parametrize("variant", ["tiny-llava", "tiny-llava-hr", "tiny-llava-next", "tiny-mgm-hd",
                                     "tiny-llava-pmod", "tiny-pmod-llava-next", "tiny-pmod-llava-next:vision_hr"])
def test_full_flops_on_meta_equal_a_real_forward(variant, images):
    name, _, target = variant.partition(":")  # vision_hr: LLaVA-NeXT's base view is not routed
    cfg = models.get_variant(name)
    if target:
        cfg = dataclasses.replace(cfg, mod=dataclasses.replace(cfg.mod, pmod_target_tokens=target))
    model = models.build_model(cfg)
    image = images[1]  # 30 x 50: LLaVA-NeXT picks one column of two tiles and unpads
    prompt = vicuna_v1("What colour is the shape?")
    seq_len = model.build_batch([prompt], [image]).token_types.shape[1]
    new_tokens = 3
    with torch.no_grad(), torch_flop_counter() as counter:
        out = model.generate([prompt], [image], max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    assert len(out["tokens"][0]) == new_tokens
    record = flops_full_meta(model.cfg, seq_len, new_tokens=new_tokens - 1, image_size=image.size)  # decode steps
    assert record["tflops"] * 1e12 == pytest.approx(counter.get_total_flops(), rel=1e-9)
    # the front-end's parts alone
    with torch.no_grad(), torch_flop_counter() as vision_counter:
        model.vision.encode(model.vision.preprocess([image]))
    parts = record["tflops_per_component"]
    vision_parts = {k: v for k, v in parts.items() if k.startswith(("vision", "projector", "patch"))}
    assert sum(vision_parts.values()) * 1e12 == pytest.approx(vision_counter.get_total_flops(), rel=1e-9)
    expected = {"vision_encoder", "projector"} | ({"vision_encoder_aux", "patch_info_mining"}
                                                  if "mgm" in variant else set())
    assert set(vision_parts) == expected and all(v > 0 for v in vision_parts.values())
