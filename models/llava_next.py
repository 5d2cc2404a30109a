"""LLaVA-NeXT vision front-end (host of p-MoD-LLaVA-NeXT): anyres tiles, unpadding, image_newline.

As transformers' LlavaNext does it, whose building blocks we use: the image processor picks the best grid from
`grid_pinpoints`, resizes and pads the image onto it and cuts it into CLIP-sized tiles, plus a base view of the
whole image; every tile goes through CLIP (layer -2, CLS dropped) and the projector; the tile features are
stitched back into one map, the padding is cut away (unpad to the original aspect ratio), an image_newline
vector ends every row, and the base view's tokens come first. The token count depends on the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionModel, LlavaNextImageProcessor
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from .config import ModelConfig
from .llava import clip_vision_config, mlp2x_gelu
from .vlm import register_frontend


@dataclass
class AnyresPixels:
    pixel_values: torch.Tensor  # [images, max tiles + 1, 3, S, S], padded across the batch
    image_sizes: torch.Tensor  # [images, 2] original (height, width)

    def to(self, device) -> "AnyresPixels":
        return AnyresPixels(self.pixel_values.to(device), self.image_sizes.to(device))


@register_frontend("llava-next")
class LlavaNextVision(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        vision = cfg.vision
        self.vision_cfg = vision
        self.grid_pinpoints = [list(p) for p in vision.grid_pinpoints]
        self.vision_tower = CLIPVisionModel(clip_vision_config(vision))
        self.projector = mlp2x_gelu(vision.hidden_size, cfg.llm.hidden_size)
        self.image_newline = nn.Parameter(torch.randn(cfg.llm.hidden_size) / cfg.llm.hidden_size**0.5)

    @property
    def num_image_tokens(self) -> int:
        return self.vision_cfg.num_image_tokens  # the largest grid; a given image may use fewer

    def image_processor(self) -> LlavaNextImageProcessor:
        vision = self.vision_cfg
        size = vision.image_size
        return LlavaNextImageProcessor(
            image_grid_pinpoints=self.grid_pinpoints, size={"shortest_edge": size},
            crop_size={"height": size, "width": size}, image_mean=list(vision.image_mean),
            image_std=list(vision.image_std),
        )

    def preprocess(self, images: list[Image.Image]) -> AnyresPixels:
        out = self.image_processor()([image.convert("RGB") for image in images], return_tensors="pt")
        return AnyresPixels(out["pixel_values"], out["image_sizes"])

    def encode(self, pixels: AnyresPixels) -> list[torch.Tensor]:
        vision = self.vision_cfg
        tiles_per_image = [
            image_size_to_num_patches(size.tolist(), self.grid_pinpoints, vision.image_size)
            for size in pixels.image_sizes
        ]
        dtype = self.projector[0].weight.dtype
        flat = torch.cat([p[:n] for p, n in zip(pixels.pixel_values, tiles_per_image)]).to(dtype)
        hidden = self.vision_tower(flat, output_hidden_states=True).hidden_states[vision.select_layer][:, 1:]
        features = torch.split(self.projector(hidden), tiles_per_image)
        side = vision.image_size // vision.patch_size
        packed = []
        for feat, size in zip(features, pixels.image_sizes):
            if feat.shape[0] == 1:  # no tiles: the base view plus one newline
                packed.append(torch.cat([feat[0], self.image_newline[None].to(feat)]))
                continue
            base, tiles = feat[0], feat[1:]
            rows, cols = get_anyres_image_grid_shape(size.tolist(), self.grid_pinpoints, vision.image_size)
            grid = tiles.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
            grid = unpad_image(grid, size)  # [C, H, W] without the padding
            newline = self.image_newline[:, None, None].expand(-1, grid.shape[1], 1).to(grid)
            grid = torch.cat([grid, newline], dim=-1).flatten(1, 2).transpose(0, 1)
            packed.append(torch.cat([base, grid]))
        return packed
