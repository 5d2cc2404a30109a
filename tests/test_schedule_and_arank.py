import pytest
import torch

from modbench import models
from modbench.models.arank import arank_of_maps, compute_arank, select_mod_layers
from modbench.models.config import ModSpec
from modbench.models.pmod import mean_kept_ratio, prd_schedule

# The 32-layer progressive-ratio-decay schedule of p-MoD (reference: layers 0-7 dense, 8-31 MoD, floor 0.15).
PRD_32 = [0.8445, 0.8061, 0.7645, 0.7202, 0.6737, 0.6253, 0.5757, 0.5253, 0.4747, 0.4243, 0.3747, 0.3263,
          0.2798, 0.2355, 0.1939, 0.1555] + [0.15] * 8


def test_prd_ratios_equal_reference():
    layers, ratios = prd_schedule(32)
    assert layers == list(range(8, 32))
    assert [round(r, 4) for r in ratios] == PRD_32
    assert mean_kept_ratio(ModSpec(scheme="pmod"), 32) == pytest.approx(0.5375, abs=1e-9)


def test_arank_of_constructed_map_is_its_rank():
    torch.manual_seed(0)
    s, rank = 12, 5
    # Strictly-lower-triangular part with exactly `rank` independent rows: rows 1..5 random, others zero.
    attn = torch.zeros(s, s)
    for row in range(1, rank + 1):
        attn[row, :row] = torch.rand(row) + 0.1
    attn += torch.eye(s) * 3  # the diagonal is ignored
    attn += torch.triu(torch.ones(s, s), diagonal=1)  # so is the upper triangle
    assert arank_of_maps(attn) == rank
    two_heads = torch.stack([attn, torch.tril(torch.ones(s, s))])  # second head: ranks 5 and 11
    assert arank_of_maps(two_heads) == (rank + s - 1) / 2


def test_select_mod_layers_keeps_top_k_dense():
    aranks = [30.0, 29.0, 28.0, 10.0, 11.0, 12.0, 27.5, 26.0]
    assert select_mod_layers(aranks, 4) == [3, 4, 5, 7]
    assert select_mod_layers([5.0, 5.0, 5.0, 1.0], 2) == [3]  # ties with the threshold stay dense
    with pytest.raises(ValueError, match="num_dense"):
        select_mod_layers(aranks, 0)


def test_compute_arank_on_tiny_model(prompts, images):
    model = models.build_model("tiny-llava")
    result = compute_arank(model, list(zip(prompts, images)), num_dense=4)
    assert len(result.per_layer) == model.cfg.llm.num_layers
    assert all(v > 0 for v in result.per_layer)
    assert len(result.mod_layers) <= model.cfg.llm.num_layers - 4
    # the model's configured attention implementation is restored afterwards
    assert model.language_model.model.hf_config._attn_implementation == "sdpa"
