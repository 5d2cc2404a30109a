"""LLaVA-1.5 vision front-end: CLIP ViT (layer -2, CLS dropped) + mlp2x_gelu projector.

Preprocessing as LLaVA-1.5 does it: pad to a square with the CLIP mean colour, resize (bicubic) to the CLIP
input size, normalise with the CLIP mean / std.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from .config import ModelConfig, VisionConfig
from .vlm import register_frontend


def clip_vision_config(vision: VisionConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_layers,
        num_attention_heads=vision.num_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        projection_dim=vision.hidden_size,
        hidden_act="quick_gelu",
    )


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA's projector: Linear, GELU, Linear (keys .0 and .2)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def pad_resize_normalise(images: list[Image.Image], size: int, vision: VisionConfig) -> torch.Tensor:
    """LLaVA's 'pad' preprocessing: square with the CLIP mean colour, bicubic resize, normalise -> [B, 3, S, S]."""
    fill = tuple(int(round(255 * m)) for m in vision.image_mean)
    return torch.stack([
        normalise(expand_to_square(image.convert("RGB"), fill).resize((size, size), Image.Resampling.BICUBIC), vision)
        for image in images
    ])


def normalise(image: Image.Image, vision: VisionConfig) -> torch.Tensor:
    """An RGB PIL image (already resized) -> normalised [3, H, W] float tensor."""
    mean = np.asarray(vision.image_mean, dtype=np.float32)
    std = np.asarray(vision.image_std, dtype=np.float32)
    arr = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(arr).permute(2, 0, 1)


@register_frontend("llava")
class LlavaVision(nn.Module):
    """CLIPVisionModel + projector; `encode` returns [num_images, num_image_tokens, llm_hidden]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        vision = cfg.vision
        self.vision_cfg = vision
        self.vision_tower = CLIPVisionModel(clip_vision_config(vision))
        if vision.projector != "mlp2x_gelu":
            raise ValueError(f"vision.projector: only 'mlp2x_gelu' is supported, got {vision.projector!r}")
        self.projector = mlp2x_gelu(vision.hidden_size, cfg.llm.hidden_size)

    @property
    def num_image_tokens(self) -> int:
        return self.vision_cfg.num_image_tokens

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return pad_resize_normalise(images, self.vision_cfg.image_size, self.vision_cfg)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.projector[0].weight.dtype
        out = self.vision_tower(pixel_values.to(dtype), output_hidden_states=True)
        features = out.hidden_states[self.vision_cfg.select_layer][:, 1:]
        return self.projector(features)
