"""Parity with transformers' own implementations on the same weights."""

import pytest
import torch
from transformers import LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from modbench import models
from modbench.models.checkpoints import to_hf_state_dict
from modbench.models.core import ModForCausalLM, llama_config
from modbench.models.llava import clip_vision_config


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_dense_decoder_equals_llama_for_causal_lm(attn):
    cfg = models.get_variant("tiny-llava")
    cfg.attn_implementation = attn
    torch.manual_seed(0)
    ours = ModForCausalLM(cfg).eval()
    theirs = LlamaForCausalLM(llama_config(cfg)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(5, cfg.llm.vocab_size, (2, 23))
    with torch.no_grad():
        ref = theirs(input_ids=ids).logits
        out = ours(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_tiny_llava_equals_transformers_llava(prompts, images):
    model = models.build_model("tiny-llava")
    cfg = model.cfg
    hf_cfg = LlavaConfig(
        text_config=llama_config(cfg).to_dict(),
        vision_config=clip_vision_config(cfg.vision).to_dict(),
        image_token_id=model.image_token_id,
        vision_feature_layer=cfg.vision.select_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=model.vision.num_image_tokens,
    )
    theirs = LlavaForConditionalGeneration(hf_cfg).eval()
    theirs.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg.family), strict=True)

    tok = model.tokenizer
    n_img = model.vision.num_image_tokens
    for prompt, image in zip(prompts, images):
        before, after = prompt.split("<image>")
        ids = ([tok.bos_token_id] + tok(before, add_special_tokens=False).input_ids + [model.image_token_id] * n_img
               + tok(after, add_special_tokens=False).input_ids)
        pixels = model.vision.preprocess([image])
        with torch.no_grad():
            ref = theirs(input_ids=torch.tensor([ids]), pixel_values=pixels).logits
            out = model([prompt], [image]).logits
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_tiny_llava_next_equals_transformers_llava_next(prompts, images):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    from modbench.models.checkpoints import to_hf_state_dict

    model = models.build_model("tiny-llava-next")
    cfg = model.cfg
    theirs = LlavaNextForConditionalGeneration(LlavaNextConfig(
        text_config=llama_config(cfg).to_dict(), vision_config=clip_vision_config(cfg.vision).to_dict(),
        image_token_index=model.image_token_id, image_grid_pinpoints=cfg.vision.grid_pinpoints,
        vision_feature_layer=cfg.vision.select_layer, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )).eval()
    theirs.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg.family), strict=True)
    tok = model.tokenizer
    lengths = set()
    for prompt, image in zip(prompts, images):  # three aspect ratios: three grids
        pixels = model.vision.preprocess([image])
        n_img = model.vision.encode(pixels)[0].shape[0]
        lengths.add(n_img)
        before, after = prompt.split("<image>")
        ids = ([tok.bos_token_id] + tok(before, add_special_tokens=False).input_ids + [model.image_token_id] * n_img
               + tok(after, add_special_tokens=False).input_ids)
        with torch.no_grad():
            ref = theirs(input_ids=torch.tensor([ids]), pixel_values=pixels.pixel_values,
                         image_sizes=pixels.image_sizes).logits
            out = model([prompt], [image]).logits
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert len(lengths) > 1  # the token count follows the image


def test_the_tower_stops_at_the_selected_layer_and_equals_the_full_forward():
    """`clip_hidden_state` runs no layer after `select_layer` and gives, bit for bit, what transformers' full
    forward gives at that index of hidden_states, for every index; one out of range is an error."""
    from transformers import CLIPVisionModel

    from modbench.models.clip import clip_hidden_state

    vision = models.get_variant("tiny-llava").vision
    torch.manual_seed(0)
    tower = CLIPVisionModel(clip_vision_config(vision)).eval()
    pixels = torch.randn(3, 3, vision.image_size, vision.image_size)
    ran = []
    for index, layer in enumerate(tower.encoder.layers):  # (flat in transformers 5)
        layer.register_forward_hook(lambda *_, index=index: ran.append(index))
    with torch.no_grad():
        full = tower(pixels, output_hidden_states=True).hidden_states
        layers = len(tower.encoder.layers)
        assert len(full) == layers + 1
        for select in range(-layers - 1, layers + 1):
            ran.clear()
            assert torch.equal(clip_hidden_state(tower, pixels, select), full[select]), select
            assert ran == list(range(select % (layers + 1)))  # the layers up to it, none after
        for select in (-layers - 2, layers + 1):
            with pytest.raises(IndexError, match="select_layer"):
                clip_hidden_state(tower, pixels, select)
