"""LLaVA-1.5 vision front-end: CLIP ViT (layer -2, CLS dropped) + mlp2x_gelu projector.

Preprocessing as LLaVA-1.5 does it (haotian-liu/LLaVA llava/mm_utils.py process_images, image_aspect_ratio
"pad"): expand2square with the fill tuple(int(x * 255) for x in image_mean) (CLIP's mean: (122, 116, 104),
truncated, not rounded), CLIPImageProcessor's bicubic resize to the CLIP input size, and its rescale and
normalise arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionModel

from .clip import (  # every host's CLIP tower (models/clip.py; also importable from here)
    clip_hidden_state,
    clip_vision_config,
)
from .config import ModelConfig, VisionConfig
from .hosts import HfLayout, HostFamily, KeyLayout, Release


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def run_stage(component: str, fn):
    """How a front-end's encode() runs each of its parts; models/flops.py passes one that counts each part's
    FLOPs under its component name (vision_encoder, projector, ...), so every front-end owns its accounting."""
    return fn()


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA's projector: Linear, GELU, Linear (keys .0 and .2)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def pad_colour(vision: VisionConfig) -> tuple[int, int, int]:
    """The fill of every host that pads (LLaVA-1.5, LLaVA-HR, Mini-Gemini: process_images in each repository's
    mm_utils.py): the mean colour truncated, tuple(int(x * 255) for x in image_mean)."""
    return tuple(int(x * 255) for x in vision.image_mean)


def pad_resize_normalise(images: list[Image.Image], size: int, vision: VisionConfig) -> torch.Tensor:
    """LLaVA's 'pad' preprocessing: square with the CLIP mean colour, bicubic resize, normalise -> [B, 3, S, S]."""
    fill = pad_colour(vision)
    return torch.stack([
        normalise(expand_to_square(image.convert("RGB"), fill).resize((size, size), Image.Resampling.BICUBIC), vision)
        for image in images
    ])


def normalise(image: Image.Image, vision: VisionConfig) -> torch.Tensor:
    """An RGB PIL image (already resized) -> normalised [3, H, W] float tensor, in CLIPImageProcessor's
    arithmetic: rescale uint8 * (1/255) in float64 then float32, (x - mean) / std in float32."""
    mean = np.asarray(vision.image_mean, dtype=np.float32)
    std = np.asarray(vision.image_std, dtype=np.float32)
    arr = (np.asarray(image, dtype=np.uint8) * (1 / 255)).astype(np.float32)
    return torch.from_numpy((arr - mean) / std).permute(2, 0, 1)


class LlavaVision(nn.Module):
    """CLIPVisionModel + projector; `encode` returns [num_images, num_image_tokens, llm_hidden]."""

    # One frozen tower then the projector: training may read the tower's output computed once
    # (suite.train_data.TowerFeatures) and run only the projector.
    tower_output_cacheable = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        vision = cfg.vision
        self.vision_cfg = vision
        self.num_image_tokens = cfg.num_image_tokens  # the largest image's; cfg.family's geometry
        self.vision_tower = CLIPVisionModel(clip_vision_config(vision))
        if vision.projector != "mlp2x_gelu":
            raise ValueError(f"vision.projector: only 'mlp2x_gelu' is supported, got {vision.projector!r}")
        self.projector = mlp2x_gelu(vision.hidden_size, cfg.llm.hidden_size)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return pad_resize_normalise(images, self.vision_cfg.image_size, self.vision_cfg)

    def meta_pixels(self, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """preprocess()'s output shape for one image (any size: it is padded square), on the meta device."""
        size = self.vision_cfg.image_size
        return torch.empty(1, 3, size, size, device="meta")

    def tower_output(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the projector reads: the tower's select_layer hidden states without the CLS token."""
        dtype = self.projector[0].weight.dtype
        return clip_hidden_state(self.vision_tower, pixel_values.to(dtype), self.vision_cfg.select_layer)[:, 1:]

    def encode(self, pixel_values: torch.Tensor, stage=run_stage) -> torch.Tensor:
        features = stage("vision_encoder", lambda: self.tower_output(pixel_values))
        return stage("projector", lambda: self.projector(features))


# The authors' layout (haotian-liu/LLaVA llava_arch.py, clip_encoder.py, projector builder); LLaVA-NeXT's
# image_newline and the hosts that extend this layout (LLaVA-HR, Mini-Gemini) reuse its entries.
AUTHORS_LLAVA_PREFIXES = (
    ("vision.image_newline", "model.image_newline"),  # LLaVA-NeXT (spatial_unpad)
    ("language_model.model.embed_tokens.", "model.embed_tokens."),
    ("language_model.model.layers.", "model.layers."),
    ("language_model.model.norm.", "model.norm."),
    ("language_model.lm_head.", "lm_head."),
    ("vision.projector.", "model.mm_projector."),
    ("vision.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
)
AUTHORS_LLAVA = KeyLayout("LLaVA", AUTHORS_LLAVA_PREFIXES)
# The LLM's and the projector's keys, shared by every authors' layout.
AUTHORS_LLM_AND_PROJECTOR = AUTHORS_LLAVA_PREFIXES[1:6]
# The model_types the authors' LLaVA code bases release under: LLaVA, γ-MoD (Yaxin9Luo/Gamma-MOD), p-MoD
# (MCG-NJU/p-MoD); LLaVA-HR and LLaVA-NeXT say which host they are with other config.json fields.
LLAVA_RELEASES = {"dense": Release("llava", "LlavaLlamaForCausalLM"),
                  "gamma": Release("mod_llava_llama", "MoDLLaVALlamaForCausalLM"),
                  "pmod": Release("pmod_llava_llama", "PmodLlavaLlamaForCausalLM")}

# transformers' LlavaForConditionalGeneration / LlavaNextForConditionalGeneration names (llava-hf).
HF_LLAVA = KeyLayout("llava-hf", (
    ("language_model.model.", "model.language_model."),
    ("vision.image_newline", "model.image_newline"),
    ("language_model.lm_head.", "lm_head."),
    ("vision.vision_tower.", "model.vision_tower."),
    ("vision.projector.0.", "model.multi_modal_projector.linear_1."),
    ("vision.projector.2.", "model.multi_modal_projector.linear_2."),
))
# llava-hf checkpoints as saved on the hub (and by save_pretrained, for compatibility) use these: (new, old),
# first match wins. transformers 4's CLIPVisionModel nests the tower under `vision_model.` (transformers 5
# flattened it), under either name of the tower.
HF_LLAVA_LEGACY = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.image_newline", "image_newline"),
    ("model.vision_tower.", "model.vision_tower.vision_model."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)

HOST_FAMILY = HostFamily(
    name="llava", frontend=LlavaVision, layout=AUTHORS_LLAVA, releases=LLAVA_RELEASES,
    hf=HfLayout("llava", HF_LLAVA, HF_LLAVA_LEGACY, read_vision=lambda vision, conf: None),
    legacy_vision_kind="clip",
)
