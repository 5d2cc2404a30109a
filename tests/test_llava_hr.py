"""The LLaVA-HR front-end: token count, position-embedding resampling, adapters after each CLIP quarter."""

import dataclasses

import torch

from modbench import models
from modbench.models.llava_hr import MixtureOfResolutionAdapter, fast_image_size, resample_position_embeddings


def test_full_size_token_count_and_fast_resolution():
    cfg = models.get_variant("llava-hr-7b")
    assert fast_image_size(cfg.vision) == 448 and cfg.num_image_tokens == 1024
    assert models.get_variant("tiny-llava-hr").num_image_tokens == 16


def test_position_embedding_resampling():
    pos = torch.randn(1 + 9, 5)
    assert torch.equal(resample_position_embeddings(pos, 3), pos)
    out = resample_position_embeddings(pos, 4)
    assert out.shape == (17, 5) and torch.equal(out[0], pos[0])  # CLS kept
    flat = torch.ones(1 + 576, 3)  # a constant grid stays constant (24^2 -> 32^2)
    torch.testing.assert_close(resample_position_embeddings(flat, 32), torch.ones(1 + 1024, 3))


def test_fresh_adapter_is_identity_and_trained_one_is_not():
    adapter = MixtureOfResolutionAdapter(16, 8)
    fast, slow = torch.randn(2, 16, 16), torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(adapter(fast, slow), fast)
    torch.nn.init.normal_(adapter.slow_proj.weight)
    torch.nn.init.normal_(adapter.fast_proj.weight)
    assert not torch.allclose(adapter(fast, slow), fast)


def test_adapters_run_after_each_of_the_first_three_quarters(images, monkeypatch):
    model = models.build_model("tiny-llava-hr")
    tower = model.vision.vision_tower
    order = []
    for i, block in enumerate(tower.fast_vision_tower.encoder.layers):
        monkeypatch.setattr(block, "forward", (lambda f, i=i: lambda *a, **k: order.append(f"block{i}") or f(*a, **k))(block.forward))
    for i, adapter in enumerate(tower.align_stages_latent):
        monkeypatch.setattr(adapter, "forward", (lambda f, i=i: lambda *a: order.append(f"adapter{i}") or f(*a))(adapter.forward))
    features = model.vision.encode(model.vision.preprocess(images[:1]))
    assert features.shape == (1, 16, model.cfg.llm.hidden_size)
    assert order == ["block0", "adapter0", "block1", "adapter1", "block2", "adapter2", "block3"]


def test_frozen_vision_has_no_adapters(images):
    cfg = models.get_variant("tiny-llava-hr")
    cfg.vision = dataclasses.replace(cfg.vision, adapters=False)
    model = models.build_model(cfg)
    assert not hasattr(model.vision.vision_tower, "align_stages_latent")
    assert not any("align_stages_latent" in key for key in model.state_dict())
    out = model.generate(["USER: <image>\nWhat? ASSISTANT:"], images[:1], max_new_tokens=2)
    assert len(out["tokens"][0]) <= 2
