"""Bad input: each a clear error naming the field."""

import pytest
import torch

from modbench import models
from modbench.models.config import ConfigError, ModelConfig, ModSpec
from modbench.models.variants import with_mod


def tiny(**mod):
    return with_mod(models.get_variant("tiny-llava"), "t", ModSpec(**mod))


def test_unknown_key_is_an_error():
    data = models.get_variant("tiny-llava").to_dict()
    data["mod"]["capacity"] = 0.5
    with pytest.raises(ConfigError, match=r"mod: unknown key\(s\) \['capacity'\]"):
        ModelConfig.from_dict(data)


def test_round_trip_through_dict():
    cfg = models.get_variant("tiny-llava-gmod")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_layer_out_of_range():
    with pytest.raises(ConfigError, match=r"mod.layers\[1\] = 6 is out of range"):
        tiny(scheme="gamma", layers=[1, 6])


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.1])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(ConfigError, match=r"mod.ratios\[1\]"):
        tiny(scheme="pmod", layers=[2, 3], ratios=[0.5, ratio])


@pytest.mark.parametrize("layers", [[0, 2], [2, 5]])
def test_gamma_first_or_last_layer_rejected_when_generating_with_cache(layers, prompts, images):
    model = models.build_model(tiny(scheme="gamma", layers=layers))
    with pytest.raises(ConfigError, match=r"mod.layers includes \[(0|5)\]"):
        model.generate(prompts[:1], images[:1], max_new_tokens=2)
    # without a cache (recomputation) it runs
    assert len(model.generate(prompts[:1], images[:1], max_new_tokens=2, use_cache=False)["tokens"]) == 1
    # and training forward passes too
    model.train()(prompts[:1], images[:1], answers=["x"])


def test_image_prompt_without_placeholder(images):
    model = models.build_model("tiny-llava")
    with pytest.raises(ValueError, match=r"prompt\[1\]: an image sample's prompt must contain <image>"):
        model.generate(["USER: <image>\nhi ASSISTANT:", "USER: hi ASSISTANT:"], images[:2], max_new_tokens=1)
    with pytest.raises(ValueError, match=r"prompt\[0\]: contains <image> but no image"):
        model.generate(["USER: <image>\nhi ASSISTANT:"], [None], max_new_tokens=1)


def test_unknown_scheme_and_variant():
    with pytest.raises(ConfigError, match="mod.scheme"):
        tiny(scheme="moe")
    with pytest.raises(ConfigError, match="unknown model variant 'nope'"):
        models.get_variant("nope")


def test_building_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build_model("tiny-llava")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_selected_by_configuration(dtype, prompts, images):
    cfg = models.get_variant("tiny-llava-gmod")
    cfg.dtype = dtype
    model = models.build_model(cfg)
    assert model.dtype == getattr(torch, dtype)
    out = model.generate(prompts[:2], images[:2], max_new_tokens=3, min_new_tokens=3, output_scores=True)
    assert torch.isfinite(out["scores"]).all() and all(len(t) == 3 for t in out["tokens"])


def test_flash_attention_refuses_a_padded_batch(prompts, images):
    cfg = models.get_variant("tiny-llava")
    cfg.attn_implementation = "flash_attention_2"
    model = models.build_model(cfg)
    with pytest.raises(NotImplementedError, match="flash_attention_2"):
        model.generate(prompts[:2], images[:2], max_new_tokens=1)


def test_fixed_skip_is_gamma_mods_only():
    """Only γ-MoD's routing reads it: on p-MoD or a dense model it would be a silent no-op (the plugin's
    `fixed_skip=` model arg reaches it as an override, so the error names the field there too)."""
    from modbench.models.resolver import resolve

    assert tiny(scheme="gamma", layers=[1, 2], fixed_skip=0.5).mod.fixed_skip == 0.5
    with pytest.raises(ConfigError, match="mod.fixed_skip applies to γ-MoD models .*not 'pmod'"):
        models.build_model(tiny(scheme="pmod", fixed_skip=0.5))  # refused where a config is built or resolved
    with pytest.raises(ConfigError, match="mod.fixed_skip applies to γ-MoD models .*not 'dense'"):
        resolve("tiny-llava", {"mod.fixed_skip": 0.3})
