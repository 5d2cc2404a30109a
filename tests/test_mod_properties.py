"""Property tests of the MoD decoder loop: nothing skipped == dense, exactly k routed, skipped tokens untouched,
router gradients, cached == uncached, batched == alone."""

import math

import pytest
import torch

from modbench import models
from modbench.models.config import ModSpec
from modbench.models.routing import IMAGE, QUESTION, RESPONSE, SYSTEM
from modbench.models.variants import with_mod


def gmod_config(prefill_threshold=0.5, layers=(1, 2, 3, 4)):
    """Tiny γ-MoD whose prefill threshold makes the random router actually skip tokens at inference."""
    return with_mod(models.get_variant("tiny-llava"), "tiny-llava-gmod-test",
                    ModSpec(scheme="gamma", layers=list(layers), prefill_threshold=prefill_threshold))


def build(spec, seed=0):
    return models.build_model(spec, seed=seed)


def test_gamma_with_nothing_skipped_equals_dense(prompts, images):
    dense = build("tiny-llava")
    gmod = build("tiny-llava-gmod")
    missing = gmod.load_state_dict(dense.state_dict(), strict=False)
    assert missing.missing_keys == ["language_model.model.routing.router.weight"]
    router = gmod.language_model.model.routing.router
    # p = softmax([0, 40])[1] == 1.0 in float32: every token kept, MLP scale exactly 1.
    router.forward = lambda x: torch.stack([torch.zeros_like(x[..., 0]), torch.full_like(x[..., 0], 40.0)], -1)
    with torch.no_grad():
        ref = dense(prompts, images).logits
        out = gmod(prompts, images).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # ...and the comparison can fail: with half the router keeping nothing, logits move.
    router.forward = lambda x: torch.stack([torch.zeros_like(x[..., 0]), x[..., 0] * 50], -1)
    with torch.no_grad():
        moved = gmod(prompts, images).logits
    assert not torch.allclose(moved, ref, atol=1e-3)


def test_gamma_training_routes_exactly_k_and_never_force_kept(prompts, images):
    model = build("tiny-llava-gmod").train()
    out = model(prompts, images, answers=["Yes", "red", "2"], collect_stats=True)
    kept, total = out.kept, out.total  # [B, layers, types]
    frac = model.cfg.mod.train_skip_fraction
    for layer in range(model.cfg.llm.num_layers):
        for b in range(len(prompts)):
            routable = int(total[b, layer, SYSTEM] + total[b, layer, IMAGE])
            skipped_routable = routable - int(kept[b, layer, SYSTEM] + kept[b, layer, IMAGE])
            expected = math.floor(routable * frac) if layer in model.cfg.mod.layers else 0
            assert skipped_routable == expected, (layer, b)
            # question and answer tokens are always kept
            for token_type in (QUESTION, RESPONSE):
                assert kept[b, layer, token_type] == total[b, layer, token_type] > 0
    assert out.routing_loss is not None and out.routing_loss > 0


def _capture_layers(model, monkeypatch):
    decoder = model.language_model.model
    seen = []
    original = decoder._run_layer

    def spy(layer_idx, hidden, normed, positions, ctx, cache, route, want_attn, shared=None):
        out = original(layer_idx, hidden, normed, positions, ctx, cache, route, want_attn, shared)
        seen.append((layer_idx, hidden.detach().clone(), out[0].detach().clone(), route, ctx.real))
        return out

    monkeypatch.setattr(decoder, "_run_layer", spy)
    return seen


@pytest.mark.parametrize("training", [True, False])
def test_gamma_skipped_tokens_untouched(prompts, images, monkeypatch, training):
    model = build(gmod_config()).train(training)
    seen = _capture_layers(model, monkeypatch)
    with torch.set_grad_enabled(training):
        model(prompts, images, answers=["Yes", "red", "2"] if training else None)
    mod_layers = [entry for entry in seen if entry[3] is not None]
    assert len(mod_layers) == 4
    n_skipped = 0
    for layer_idx, before, after, route, real in mod_layers:
        skipped = real & ~route.keep
        n_skipped += int(skipped.sum())
        assert torch.equal(after[skipped], before[skipped]), layer_idx
        assert not torch.allclose(after[route.keep], before[route.keep])
    assert n_skipped > 0


def test_pmod_skipped_vision_tokens_are_scaled_only(prompts, images, monkeypatch):
    model = build("tiny-llava-pmod")
    for router in model.language_model.model.routing.routers.values():
        torch.nn.init.normal_(router.router.weight, std=0.5)
    seen = _capture_layers(model, monkeypatch)
    with torch.no_grad():
        model(prompts, images)
    for layer_idx, before, after, route, real in seen:
        if route is None:
            continue
        skipped = real & ~route.keep
        assert skipped.any()
        expected = before[skipped] * route.skip_scale[skipped][:, None]
        torch.testing.assert_close(after[skipped], expected)
        assert not torch.equal(route.skip_scale[skipped], torch.ones_like(route.skip_scale[skipped]))


def test_pmod_keeps_trunc_ratio_of_vision_tokens_and_all_text(prompts, images):
    model = build("tiny-llava-pmod")
    with torch.no_grad():
        out = model(prompts, images, collect_stats=True)
    routing = model.language_model.model.routing
    n_vision = model.vision.num_image_tokens
    for layer in range(model.cfg.llm.num_layers):
        expected = math.floor(n_vision * routing.ratios[layer]) if layer in routing.ratios else n_vision
        assert (out.kept[:, layer, IMAGE] == expected).all(), layer
        assert torch.equal(out.kept[:, layer, QUESTION], out.total[:, layer, QUESTION])
        assert torch.equal(out.kept[:, layer, SYSTEM], out.total[:, layer, SYSTEM])


def test_router_gradients_through_mlp_scale_and_routing_loss(prompts, images):
    model = build("tiny-llava-gmod").train()
    router = model.language_model.model.routing.router
    out = model(prompts, images, answers=["Yes", "red", "2"])
    out.lm_loss.backward(retain_graph=True)
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    router.weight.grad = None
    out.routing_loss.backward()
    assert router.weight.grad.abs().sum() > 0


def test_pmod_router_gets_gradients(prompts, images):
    model = build("tiny-llava-pmod").train()
    out = model(prompts, images, answers=["Yes", "red", "2"])
    out.loss.backward()
    routers = model.language_model.model.routing.routers
    # The last layer's vision positions reach no labelled logit, so its router has no gradient to get.
    last = str(model.cfg.llm.num_layers - 1)
    grads = {k: r.router.weight.grad for k, r in routers.items() if k != last}
    assert len(grads) >= 3
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads.keys()


SPECS = ["tiny-llava", "tiny-llava-pmod", "gmod-skipping", "tiny-llava-hr-gmod", "tiny-pmod-llava-next",
         "tiny-mgm-hd-gmod"]


def _spec(name):
    return gmod_config() if name == "gmod-skipping" else name


@pytest.mark.parametrize("name", SPECS)
def test_cached_generation_equals_uncached(prompts, images, name):
    model = build(_spec(name))
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, output_scores=True)
    cached = model.generate(prompts, images, use_cache=True, **kwargs)
    uncached = model.generate(prompts, images, use_cache=False, **kwargs)
    assert cached["tokens"] == uncached["tokens"]
    torch.testing.assert_close(cached["scores"], uncached["scores"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", SPECS)
def test_batch_of_three_equals_alone(prompts, images, name):
    model = build(_spec(name))
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, output_scores=True)
    batched = model.generate(prompts, images, **kwargs)
    assert len(set(batched["prompt_lengths"])) == 3  # really different lengths, so rows are padded
    for i in range(3):
        alone = model.generate([prompts[i]], [images[i]], **kwargs)
        assert batched["tokens"][i] == alone["tokens"][0]
        torch.testing.assert_close(batched["scores"][i], alone["scores"][0], rtol=1e-4, atol=1e-4)


def test_gamma_decode_skips_layers_without_kv_entry(prompts, images):
    model = build(gmod_config())
    out = model.generate(prompts[:1], images[:1], max_new_tokens=6, min_new_tokens=6)
    lengths = out["cache"].layer_lengths()[:, 0]
    dense_len = int(lengths[0])
    assert int(lengths[-1]) == dense_len  # last layer dense
    assert all(int(lengths[layer]) < dense_len for layer in (1, 2, 3, 4))


def test_text_only_prompt(prompts):
    model = build("tiny-llava-gmod")
    out = model.generate(["A chat. USER: Say yes. ASSISTANT:"], None, max_new_tokens=3, min_new_tokens=3)
    assert len(out["tokens"][0]) == 3


def test_rope_positions_compacted_in_gamma_original_in_pmod(prompts, images, monkeypatch):
    for spec, compact in ((gmod_config(), True), ("tiny-llava-pmod", False)):
        model = build(spec)
        decoder = model.language_model.model
        calls = []
        original = decoder.rotary_emb.forward
        monkeypatch.setattr(decoder.rotary_emb, "forward", lambda x, pos: calls.append(pos.clone()) or original(x, pos))
        with torch.no_grad():
            out = model(prompts[:1], images[:1], collect_stats=True)
        n_real = int(out.total[0, 0].sum())
        # one table for the layers running every token (they share it), one per routed layer
        routed = [call for call in calls if call.shape[1] < n_real]
        mod_layers = decoder.routing.mod_layers
        assert routed and len(calls) - len(routed) == 1 and len(routed) <= len(mod_layers) < model.cfg.llm.num_layers
        assert torch.equal(calls[0][0], torch.arange(n_real))  # layer 0 is dense: the prompt's own positions
        for call in routed:
            pos = call[0]
            if compact:
                assert torch.equal(pos, torch.arange(len(pos)))
            else:
                assert pos[-1] == n_real - 1 and not torch.equal(pos, torch.arange(len(pos)))


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-llava-gmod", "tiny-llava-pmod"])
def test_right_padded_training_runs_without_a_mask_and_gives_the_left_padded_loss_and_gradients(
        prompts, images, name, monkeypatch):
    """Training pads right and computes logits only at the labels: causality alone then hides the padding (no
    attention mask, the kernels' fused causal path), dense and packed MoD layers alike. Same loss and gradients
    as a left-padded, masked batch with logits everywhere."""
    from modbench.models.core import ModDecoder
    from modbench.models.prompt import tokenize_prompt

    model = build(name).train()
    samples = [tokenize_prompt(model.tokenizer, p, True, a) for p, a in zip(prompts, ["Yes", "red", "2"])]
    pixels = model.vision.preprocess(images)
    masks, real_mask = [], ModDecoder._mask
    monkeypatch.setattr(ModDecoder, "_mask", lambda self, *args: masks.append(real_mask(self, *args)) or masks[-1])

    def loss_and_grads(pad_side, at_labels):
        model.zero_grad(set_to_none=True)
        batch = model.assemble(samples, pixels, pad_side=pad_side)
        out = model.language_model(inputs_embeds=batch.inputs_embeds, token_types=batch.token_types,
                                   labels=batch.labels, logits_at_labels=at_labels)
        out.loss.backward()
        return out.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    reference, reference_grads = loss_and_grads("left", False)
    # rows of different lengths: the left-padded dense layers need a mask (packed MoD layers never do)
    assert any(m is not None for m in masks)
    masks.clear()
    loss, grads = loss_and_grads("right", True)
    assert masks and all(m is None for m in masks)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert grads.keys() == reference_grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[key], rtol=1e-4, atol=1e-6, msg=key)
    # ...and the comparison can fail: left padding without its mask lets real tokens see the padding.
    monkeypatch.setattr(ModDecoder, "_mask", lambda self, *args: None)
    unmasked, _ = loss_and_grads("left", False)
    assert not torch.allclose(unmasked, reference, atol=1e-4)


@pytest.mark.parametrize("reserve", [None, 0, 2])  # room for every step; none (grows by half); too little
@pytest.mark.parametrize("name", ["tiny-llava", "gmod-skipping", "tiny-llava-pmod"])
def test_the_in_place_kv_cache_generates_bitwise_what_concatenation_does(prompts, images, name, reserve,
                                                                         monkeypatch):
    """GrowingKVLayer (decode steps write their slot into a reserved buffer) against transformers' DynamicCache
    (each step concatenates the whole cache anew): the same tokens and bitwise the same scores, in a left-padded
    batch, whatever the reserve (None: generation's own, its max_new_tokens)."""
    from transformers import DynamicCache

    from modbench.models.core import ModCache, ModForCausalLM

    model = build(_spec(name))
    kwargs = dict(max_new_tokens=7, min_new_tokens=7, output_scores=True)
    new_cache = ModForCausalLM.new_cache
    if reserve is not None:
        monkeypatch.setattr(ModForCausalLM, "new_cache",
                            lambda self, batch, device, reserve=0, room=reserve: new_cache(self, batch, device, room))
    in_place = model.generate(prompts, images, **kwargs)
    layer = in_place["cache"].kv.layers[0]
    assert layer.key_buffer.shape[-2] >= layer.length == layer.keys.shape[-2] > 7
    assert layer.keys.data_ptr() == layer.key_buffer.data_ptr()  # a view of the buffer, not a copy

    def concatenating(self, batch, device, reserve=0):
        cache = ModCache(self.cfg.llm.num_layers, batch, device)
        cache.kv = DynamicCache()
        return cache

    monkeypatch.setattr(ModForCausalLM, "new_cache", concatenating)
    concatenated = model.generate(prompts, images, **kwargs)
    assert type(concatenated["cache"].kv.layers[0]).__name__ == "DynamicLayer"
    assert in_place["tokens"] == concatenated["tokens"]
    assert torch.equal(in_place["scores"], concatenated["scores"])


@pytest.mark.parametrize("name, shared_by", [("tiny-llava", "all"), ("gmod-skipping", "dense")])
def test_the_layers_running_every_token_build_one_mask_and_rotary_table_per_forward(prompts, images, name,
                                                                                     shared_by, monkeypatch):
    """In a left-padded batch each layer needs a padding mask and a rotary table; the layers that run every real
    token share one of each per forward (a routed layer builds its own), and generation is unchanged (the
    cached == uncached and batch == alone tests above hold with it)."""
    from modbench.models.core import ModDecoder

    model = build(_spec(name))
    masks, real_mask = [], ModDecoder._mask
    monkeypatch.setattr(ModDecoder, "_mask", lambda self, *args: masks.append(real_mask(self, *args)) or masks[-1])
    steps = 4
    model.generate(prompts, images, max_new_tokens=steps, min_new_tokens=steps)
    routed = len(gmod_config().mod.layers) if shared_by == "dense" else 0
    assert any(m is not None for m in masks)  # rows of different lengths: masks are needed
    # per forward: one for the layers running every token, one per routed layer that ran tokens
    assert steps <= len(masks) <= steps * (1 + routed)
    assert len(masks) < steps * model.cfg.llm.num_layers


def test_the_kv_buffer_reserves_at_most_its_cap_grows_by_an_eighth_and_refuses_what_it_cannot_track():
    """A benchmark's answer length (MMBench: 1,024) is not allocated up front: the first update reserves at most
    RESERVE_CAP entries; past them the buffer grows by max(an eighth, the cap). DynamicLayer's crop / reorder /
    row selection would leave the buffer behind: refused; reset empties it."""
    from modbench.models.core import GrowingKVLayer

    layer = GrowingKVLayer(reserve=1024)
    states = lambda n: torch.randn(2, 3, n, 4)  # noqa: E731
    keys = [states(600)]
    layer.update(keys[0], keys[0])
    assert layer.key_buffer.shape[-2] == 600 + GrowingKVLayer.RESERVE_CAP
    for _ in range(GrowingKVLayer.RESERVE_CAP + 1):
        keys.append(states(1))
        out, _ = layer.update(keys[-1], keys[-1])
    assert layer.key_buffer.shape[-2] == 665 + 665 // 8 and torch.equal(out, torch.cat(keys, dim=-2))
    for call in (lambda: layer.crop(1), lambda: layer.batch_select_indices(torch.tensor([0]))):
        with pytest.raises(NotImplementedError):
            call()
    layer.reset()
    assert layer.length == 0 and layer.key_buffer is None
