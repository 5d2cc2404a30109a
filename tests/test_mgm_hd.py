"""The Mini-Gemini-HD front-end: views, token count, patch-info mining reads only its own region."""

import torch

from modbench import models


def test_token_counts():
    assert models.get_variant("mgm-hd-7b").num_image_tokens == 2880
    assert models.get_variant("tiny-mgm-hd").num_image_tokens == 5 * 16


def test_views_are_row_major_crops_then_global(images):
    model = models.build_model("tiny-mgm-hd")
    pixels = model.vision.preprocess(images[:1])
    views, high = pixels.views[0], pixels.high_res
    assert views.shape == (5, 3, 32, 32) and high.shape == (1, 3, 64, 64)
    low = torch.nn.functional.interpolate(high, size=(64, 64), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(views[1], low[:, :32, 32:])  # crop (row 0, col 1): top right
    torch.testing.assert_close(views[2], low[:, 32:, :32])  # crop (row 1, col 0): bottom left


def test_mining_reads_only_the_tokens_own_region():
    vision = models.build_model("tiny-mgm-hd").vision
    tokens = torch.randn(1, 16, 32)  # 4 x 4 tokens
    high = torch.randn(1, 80, 8, 8)  # 2 x 2 region per token
    before = vision.mine(tokens, high)
    changed = high.clone()
    changed[:, :, 0:2, 2:4] += 5.0  # the region of token (row 0, col 1) = index 1
    after = vision.mine(tokens, changed)
    moved = (after - before).abs().amax(dim=-1)[0]
    assert moved[1] > 0 and torch.all(moved[torch.arange(16) != 1] == 0)


def test_features_are_projected_tokens_plus_mined(images):
    model = models.build_model("tiny-mgm-hd")
    with torch.no_grad():
        features = model.vision.encode(model.vision.preprocess(images[:2]))
    assert features.shape == (2, 80, model.cfg.llm.hidden_size)
