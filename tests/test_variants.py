import pytest

from modbench import models
from modbench.models.params import count_parameters
from modbench.suite.cli import main as cli_main

FULL = [cfg.name for cfg in models.list_variants() if not cfg.tiny and not cfg.name.startswith("cpu-")]


@pytest.mark.parametrize("name", FULL)
def test_full_size_specs_instantiate_on_meta(name):
    cfg = models.get_variant(name)
    n = count_parameters(cfg)
    assert n > 6e9
    if cfg.mod.scheme == "gamma":  # the shared router adds 2 x hidden
        dense = models.get_variant(name.split("-gmod")[0])
        assert n - count_parameters(dense) == 2 * cfg.llm.hidden_size


def test_llava_15_7b_parameter_count():
    assert count_parameters(models.get_variant("llava-1.5-7b")) == pytest.approx(7.06e9, rel=0.01)


VICUNA_7B_PARAMS = 6_738_415_616  # Llama-2-7B / Vicuna-7B-v1.5
CLIP_L_336_VISION_PARAMS = 303_507_456  # transformers CLIPVisionModel of openai/clip-vit-large-patch14-336
CONVNEXT_L_MLP_PARAMS = 200_128_168  # timm convnext_large_mlp, 1000-class head ("200.1M" on its model card)


def _adapter_params(fast: int, slow: int) -> int:  # one mixture-of-resolution adapter, from its layer shapes
    return ((slow * slow + slow) + (slow * fast + fast) + (fast * 49 + fast) + (fast * fast + fast)
            + (2 * fast * (fast // 2) + fast // 2) + (fast // 2 + 1))


def test_llava_hr_7b_parameter_count_by_component():
    """LLaVA-HR-7B = Vicuna-7B + CLIP-L/336 + ConvNeXt-L (timm, with its heads) + 3 MR adapters + fusion +
    projector = 7.28B. The γ-MoD tables print "7B" for it (Tables 3 and 6 as the authors publish them)."""
    from collections import Counter

    from modbench.models.params import build_on_meta

    groups = Counter()
    for name, p in build_on_meta(models.get_variant("llava-hr-7b")).named_parameters():
        key = name.split(".")[0] if name.startswith("language_model") else ".".join(name.split(".")[:3])
        groups["vision.projector" if key.startswith("vision.projector") else key] += p.numel()
    fast, slow, hidden = 1024, 1536, 4096
    assert groups["language_model"] == VICUNA_7B_PARAMS
    assert groups["vision.vision_tower.fast_vision_tower"] == CLIP_L_336_VISION_PARAMS
    assert groups["vision.vision_tower.slow_vision_tower"] == CONVNEXT_L_MLP_PARAMS
    assert groups["vision.vision_tower.align_stages_latent"] == 3 * _adapter_params(fast, slow)
    assert groups["vision.vision_tower.align_stages"] == (fast * fast + fast) + (slow * fast + fast)
    assert groups["vision.projector"] == (fast * hidden + hidden) + (hidden * hidden + hidden)
    assert sum(groups.values()) == pytest.approx(7.28e9, rel=0.001)


def test_models_cli_lists_every_variant(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    for cfg in models.list_variants():
        assert cfg.name in out
