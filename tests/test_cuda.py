"""The GPU user's code paths: half precision on the device, sdpa / eager / flash-attention parity, cached
generation, CUDA-event timing and CUDA peak memory. CI has no GPU: the module is skipped there unless
MODBENCH_TEST_DEVICE names a device it has (MODBENCH_TEST_DEVICE=cpu runs the same tests on the CPU, which is
how they are checked without a GPU; the default, cuda, is what a GPU machine runs).

Self-contained (its own prompts and images, no conftest fixture), so that it also runs with `--noconftest` on a
machine without the fixture benchmarks' dependencies (scripts/device_check.sh)."""

import copy
import dataclasses
import importlib.util
import json
import math
import os
from itertools import chain

import pytest
import torch
from drawing import draw_image

from modbench import models
from modbench.models.config import ModSpec
from modbench.models.routing import IMAGE, PAD

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

DEVICE = os.environ.get("MODBENCH_TEST_DEVICE", "cuda")
ON_CUDA = torch.device(DEVICE).type == "cuda"
if ON_CUDA and not torch.cuda.is_available():
    pytest.skip(f"MODBENCH_TEST_DEVICE={DEVICE} but torch.cuda.is_available() is False: these tests need a GPU "
                "(MODBENCH_TEST_DEVICE=cpu runs them on the CPU)", allow_module_level=True)

# The dtype of the "half precision" tests: float16 on CUDA. On the CPU float32 by default: torch's CPU kernels
# run these models in float16 too (all these tests pass so, MODBENCH_TEST_HALF=float16), but 3-10x slower
# than in float32, past this file's time budget on two cores.
HALF = os.environ.get("MODBENCH_TEST_HALF", "float16" if ON_CUDA else "float32")
HALF_DTYPE = getattr(torch, HALF)
# float16 keeps ~3 significant digits (eps 9.8e-4). The tiny models' logits are O(1) (|max| ~2.5) and two paths
# that round differently (kernels, packing, mask vs fused causal) differ by up to ~4e-3; a token routed
# differently, or a broken mask or cache, moves logits by O(1).
ATOL = RTOL = 2e-2
DEVICE_TYPE = torch.device(DEVICE).type

GAMMA_PAIRS = [("tiny-llava", "tiny-llava-gmod"), ("tiny-llava-hr", "tiny-llava-hr-gmod"),
               ("tiny-mgm-hd", "tiny-mgm-hd-gmod")]
PMOD_PAIRS = [("tiny-llava", "tiny-llava-pmod"), ("tiny-llava-next", "tiny-pmod-llava-next")]
VARIANTS = sorted({name for pair in GAMMA_PAIRS + PMOD_PAIRS for name in pair})


def inputs(n=3):
    """n of three (prompt, image) pairs of different lengths and image sizes (a padded batch)."""
    from modbench.models.prompt import vicuna_v1

    prompts = [
        vicuna_v1("Is there a red circle in the image? Answer the question using a single word or phrase."),
        vicuna_v1("What colour is the shape?"),
        vicuna_v1("How many objects are shown in the picture? Answer with a number."),
    ]
    images = [draw_image((200, 30, 30), "circle"), draw_image((30, 30, 200), "square", (30, 50)),
              draw_image((30, 160, 30), "circle", (64, 64))]
    return prompts[:n], images[:n]


def config(name, dtype=HALF, attn=None):
    cfg = models.get_variant(name) if isinstance(name, str) else copy.deepcopy(name)
    cfg.dtype = dtype
    if attn is not None:
        cfg.attn_implementation = attn
    return cfg


def build(name, dtype=HALF, attn=None, seed=0):
    return models.build_model(config(name, dtype, attn), seed=seed, device=DEVICE)


def assert_on_device(model, dtype):
    tensors = list(chain(model.named_parameters(), model.named_buffers()))
    elsewhere = [(k, str(t.device)) for k, t in tensors if t.device.type != DEVICE_TYPE]
    assert not elsewhere, f"not on {DEVICE}: {elsewhere[:8]}"
    wrong = [(k, t.dtype) for k, t in model.named_parameters() if t.is_floating_point() and t.dtype != dtype]
    assert not wrong, wrong[:8]


def pin_gamma_routing(model):
    """γ-MoD routing that no rounding can flip. The tiny twins' untrained routers put p near the 0.5 thresholds,
    where the few-ulp differences between two fp16 computations of the same thing (cached vs recomputed, sdpa vs
    eager) flip a token's route now and then (fp16 vs fp32 on CPU: 1 seed in 10) and the comparison would fail
    for no fault. Pinned: image tokens in two columns of three are skipped (p = 0.2; which columns depends on the
    layer, so each MoD layer's cache differs), every other token runs with p = 0.9 (its MLP branch scaled by p),
    so the routed path (packing, compacted RoPE positions, per-layer caches, MLP scale) still runs."""
    routing = model.language_model.model.routing
    route = routing.route

    def pinned(layer_idx, hidden, normed, ctx):
        cols = torch.arange(ctx.token_types.shape[1], device=normed.device)
        skip = (ctx.token_types == IMAGE) & ((cols + layer_idx) % 3 != 0)
        p = torch.where(skip, torch.tensor(0.2, device=normed.device), torch.tensor(0.9, device=normed.device))
        routing.keep_probability = lambda normed, layer: (None, p)  # inference reads p only
        return route(layer_idx, hidden, normed, ctx)

    routing.route = pinned
    return model


def build_pinned(name, **kwargs):
    model = build(name, **kwargs)
    return pin_gamma_routing(model) if model.cfg.mod.scheme == "gamma" else model


def real_logits(model, prompts, images):
    """Logits at the real (non-pad) positions of a left-padded batch, [tokens, vocab] in float32."""
    with torch.no_grad():
        batch = model.build_batch(prompts, images)
        out = model.language_model(inputs_embeds=batch.inputs_embeds, token_types=batch.token_types)
    return out.logits[batch.token_types != PAD].float()


def assert_same_greedy(ref, out, eos_token_id):
    """Equal greedy token ids, scores close at every step. An exact tie may break either way under fp16
    rounding: a row may part from the reference only at a step where the reference's two best tokens are
    within the tolerance, and it is compared up to that step."""
    assert len(out["tokens"]) == len(ref["tokens"])
    for row, (ref_tokens, tokens) in enumerate(zip(ref["tokens"], out["tokens"])):
        assert len(tokens) == len(ref_tokens) > 0, row
        for step, (a, b) in enumerate(zip(ref_tokens, tokens)):
            torch.testing.assert_close(out["scores"][row, step], ref["scores"][row, step], atol=ATOL, rtol=RTOL,
                                       msg=lambda m: f"row {row}, step {step}: {m}")
            if a != b:
                scores = ref["scores"][row, step].clone()
                scores[eos_token_id] = -torch.inf  # suppressed by min_new_tokens
                best, second = scores.topk(2).values.tolist()
                assert best - second <= ATOL + RTOL * abs(best), (
                    f"row {row}, step {step}: token {b} instead of {a}, and not a near tie ({best} vs {second})")
                break


# --- 1. half-precision forward -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_half_forward_on_the_device_is_finite(name):
    model = build(name)
    assert_on_device(model, HALF_DTYPE)
    prompts, images = inputs()
    with torch.no_grad():
        out = model(prompts, images, collect_stats=True)
    assert out.logits.dtype == HALF_DTYPE and out.logits.device.type == DEVICE_TYPE
    assert out.logits.shape[0] == 3 and out.logits.shape[-1] == model.cfg.llm.vocab_size
    assert bool(torch.isfinite(out.logits).all()), f"{name}: non-finite logits in {HALF}"
    if model.cfg.mod.scheme != "dense":  # the routed path ran: some MoD layer skipped tokens
        assert bool((out.kept < out.total).any()), name


@pytest.mark.parametrize("dense_name, gamma_name", GAMMA_PAIRS)
def test_half_gamma_with_nothing_skipped_equals_dense(dense_name, gamma_name):
    """As tests/test_mod_properties.py states it on CPU: γ-MoD with the dense weights and a router whose p is 1
    (softmax([0, 40])[1] == 1.0, computed in float32) is the dense model; here in HALF on the device."""
    dense, gmod = build(dense_name), build(gamma_name)
    missing = gmod.load_state_dict(dense.state_dict(), strict=False)
    assert missing.missing_keys == ["language_model.model.routing.router.weight"]
    router = gmod.language_model.model.routing.router
    router.forward = lambda x: torch.stack([torch.zeros_like(x[..., 0]), torch.full_like(x[..., 0], 40.0)], -1)
    prompts, images = inputs()
    with torch.no_grad():
        ref = dense(prompts, images).logits
        out = gmod(prompts, images, collect_stats=True)
    assert torch.equal(out.kept, out.total)  # nothing skipped
    torch.testing.assert_close(out.logits, ref, atol=ATOL, rtol=RTOL)
    # ...and the comparison can fail: with half the router keeping nothing, logits move.
    router.forward = lambda x: torch.stack([torch.zeros_like(x[..., 0]), x[..., 0] * 50], -1)
    with torch.no_grad():
        moved = gmod(prompts, images).logits
    assert not torch.allclose(moved, ref, atol=10 * ATOL, rtol=RTOL)


@pytest.mark.parametrize("dense_name, pmod_name", PMOD_PAIRS)
def test_half_pmod_with_nothing_skipped_equals_dense(dense_name, pmod_name):
    """p-MoD keeping every vision token (ratio 1) with its released zero-initialised routers (w = 0.2 tanh(0) + 1
    = 1, so no token is scaled) and the dense weights is the dense model (tests/test_train.py states it on
    CPU)."""
    dense = build(dense_name)
    spec = ModSpec(scheme="pmod", layers=[1, 2, 3, 4], ratios=[1.0] * 4)
    pmod_cfg = dataclasses.replace(config(pmod_name), mod=spec)
    pmod = models.build_model(pmod_cfg, device=DEVICE)
    missing = pmod.load_state_dict(dense.state_dict(), strict=False)
    assert missing.missing_keys and all(".routing.routers." in key for key in missing.missing_keys)
    prompts, images = inputs()
    with torch.no_grad():
        ref = dense(prompts, images).logits
        out = pmod(prompts, images, collect_stats=True)
    assert torch.equal(out.kept, out.total)
    torch.testing.assert_close(out.logits, ref, atol=ATOL, rtol=RTOL)
    # ...and the comparison can fail: trained-looking routers scale the tokens' MLP branches (w != 1).
    with torch.no_grad():
        for router in pmod.language_model.model.routing.routers.values():
            torch.nn.init.normal_(router.router.weight, std=2.0)
        moved = pmod(prompts, images).logits
    assert not torch.allclose(moved, ref, atol=10 * ATOL, rtol=RTOL)


# --- 2. cached generation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-llava-gmod", "tiny-llava-hr-gmod", "tiny-mgm-hd-gmod", "tiny-llava-pmod",
                                  "tiny-pmod-llava-next"])
def test_half_cached_generation_equals_uncached(name):
    """tests/test_mod_properties.py's cached == uncached, in HALF on the device (γ-MoD routing pinned, p-MoD's
    zero-initialised routers tie exactly and rank by position: no rounding changes a route)."""
    model = build_pinned(name)
    prompts, images = inputs()
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, output_scores=True)
    cached = model.generate(prompts, images, use_cache=True, **kwargs)
    uncached = model.generate(prompts, images, use_cache=False, **kwargs)
    assert cached["scores"].device.type == DEVICE_TYPE
    assert_same_greedy(uncached, cached, model.tokenizer.eos_token_id)
    # the cache is the routed one: an MoD layer holds fewer entries than layer 0 (dense) for every row
    lengths = cached["cache"].layer_lengths()
    mod_layer = model.language_model.model.routing.mod_layers[0]
    assert bool((lengths[mod_layer] < lengths[0]).all()), lengths.tolist()


# --- 3. attention implementations ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-llava", "tiny-llava-gmod", "tiny-pmod-llava-next"])
def test_half_sdpa_matches_eager(name):
    """A padded batch of three (eager always takes the additive mask; sdpa takes it or its fused causal path)."""
    eager, sdpa = build_pinned(name, attn="eager"), build_pinned(name, attn="sdpa")
    assert eager.language_model.model.hf_config._attn_implementation == "eager"
    prompts, images = inputs()
    ref, out = real_logits(eager, prompts, images), real_logits(sdpa, prompts, images)
    assert bool(torch.isfinite(ref).all()) and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["tiny-llava-gmod", "tiny-pmod-llava-next"])
def test_half_flash_attention_2_matches_sdpa_at_batch_one(name):
    if importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash_attn not installed")
    if not ON_CUDA:
        pytest.skip("flash_attention_2 runs on CUDA only")
    flash, sdpa = build_pinned(name, attn="flash_attention_2"), build_pinned(name, attn="sdpa")
    prompts, images = inputs(1)  # the loop refuses padding masks with flash-attention (models/core.py)
    torch.testing.assert_close(real_logits(flash, prompts, images), real_logits(sdpa, prompts, images),
                               atol=ATOL, rtol=RTOL)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, output_scores=True)
    assert_same_greedy(sdpa.generate(prompts, images, **kwargs), flash.generate(prompts, images, **kwargs),
                       flash.tokenizer.eos_token_id)
    # ...and a padded batch is refused, not run with a silently ignored mask
    with pytest.raises(NotImplementedError, match="flash_attention_2"):
        flash.generate(*inputs(3), max_new_tokens=2)


# --- 4. latency ----------------------------------------------------------------------------------------------

TIMER = "cuda_events" if ON_CUDA else "perf_counter"
PEAK_KIND = "cuda_max_memory_allocated" if ON_CUDA else "process_peak_rss"


def check_phase(stats, n):
    assert stats["n"] == n
    assert all(math.isfinite(stats[k]) and stats[k] > 0 for k in ("median", "p10", "p90", "mean")), stats
    assert stats["p10"] <= stats["median"] <= stats["p90"]


def test_measure_latency_on_the_device_times_with_its_clock():
    from modbench.suite.latency import LatencySpec, measure_latency

    model = build("tiny-llava-hr-gmod")
    spec = LatencySpec(image_tokens=48, prompt_tokens=12, new_tokens=4, batch_size=2, warmup=1, repeats=3)
    report = measure_latency(model, spec, image=inputs(1)[1][0])
    json.dumps(report)  # serialisable
    assert report["timer"] == TIMER
    assert torch.device(report["device"]).type == DEVICE_TYPE and report["dtype"] == HALF
    check_phase(report["seconds"]["prefill"], spec.repeats)  # median and spread per phase
    check_phase(report["seconds"]["decode_per_token"], spec.repeats * (spec.new_tokens - 1))
    check_phase(report["seconds"]["vision_encode"], spec.repeats)
    assert report["peak_memory"]["kind"] == PEAK_KIND and report["peak_memory"]["bytes"] > 0
    assert all(b > 0 for b in report["kv_cache"]["bytes_per_layer"])


def test_latency_table_on_the_device_with_dtype_and_attention_overrides():
    from modbench.suite.latency import LatencySpec, latency_table

    spec = LatencySpec(image_tokens=32, prompt_tokens=10, new_tokens=3, warmup=1, repeats=2)
    names = ["tiny-llava-hr", "tiny-llava-hr-gmod"]
    out = latency_table(names, [1], spec, device=DEVICE, dtype=HALF, attn_implementation="sdpa")
    assert [run["model"] for run in out["runs"]] == names
    for run in out["runs"]:
        assert run["timer"] == TIMER and run["dtype"] == HALF and run["attn_implementation"] == "sdpa"
        assert run["peak_memory"]["kind"] == PEAK_KIND and run["peak_memory"]["bytes"] > 0
        check_phase(run["seconds"]["prefill"], spec.repeats)
        check_phase(run["seconds"]["decode_per_token"], spec.repeats * (spec.new_tokens - 1))
    for row in out["table"]:
        assert row["prefill_ms"] > 0 and row["decode_ms/token"] > 0 and row["e2e_ms"] > 0, row
        low, high = (float(v) for v in row["prefill_p10-p90"].split("-"))
        assert 0 <= low <= high
    (comparison,) = out["comparisons"]  # ratios reported, not judged: no timing assertion
    assert all(math.isfinite(comparison[k]) and comparison[k] > 0
               for k in ("prefill_time_ratio", "e2e_time_ratio", "flops_ratio"))


# --- 5. bfloat16 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-llava-hr-gmod", "tiny-pmod-llava-next"])
def test_bfloat16_forward_and_generation_on_the_device(name):
    model = build(name, dtype="bfloat16")
    assert_on_device(model, torch.bfloat16)
    prompts, images = inputs()
    with torch.no_grad():
        out = model(prompts, images, collect_stats=True)
    assert out.logits.dtype == torch.bfloat16
    assert bool(torch.isfinite(out.logits).all()), f"{name}: non-finite logits in bfloat16"
    assert bool((out.kept < out.total).any())  # the routed path ran
    generated = model.generate(prompts, images, max_new_tokens=4, min_new_tokens=4, output_scores=True)
    assert [len(t) for t in generated["tokens"]] == [4, 4, 4]
    assert bool(torch.isfinite(generated["scores"]).all())


# --- 6. models moved to the device by the library --------------------------------------------------------------

def test_checkpoint_loads_onto_the_device_in_half(tmp_path):
    """A released-layout checkpoint (float32 on disk) loaded as the GPU user loads it: dtype HALF,
    device_map the device; the same model as one built there."""
    from modbench.models.checkpoints import save_authors_checkpoint

    save_authors_checkpoint(models.build_model("tiny-llava-hr-gmod"), tmp_path / "ckpt", "mod_llava_llama")
    loaded = models.load(str(tmp_path / "ckpt"), dtype=HALF, device_map=DEVICE)
    assert_on_device(loaded, HALF_DTYPE)
    built = build("tiny-llava-hr-gmod")
    prompts, images = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(prompts, images).logits, built(prompts, images).logits,
                                   atol=ATOL, rtol=RTOL)


def test_convert_to_mod_of_a_model_on_the_device_stays_on_the_device():
    """models.convert.convert_to_mod of a dense model on the device: the MoD model is whole on the device (its
    buffers too) and, keeping every token, equals the dense one."""
    from modbench.models.convert import convert_to_mod

    dense = build("tiny-llava")
    pmod = convert_to_mod(dense, ModSpec(scheme="pmod", layers=[1, 2, 3, 4], ratios=[1.0] * 4))
    assert_on_device(pmod, HALF_DTYPE)
    prompts, images = inputs()
    with torch.no_grad():
        torch.testing.assert_close(pmod(prompts, images).logits, dense(prompts, images).logits,
                                   atol=ATOL, rtol=RTOL)
