"""LLaVA-NeXT vision front-end (host of p-MoD-LLaVA-NeXT): anyres tiles, unpadding, image_newline.

Preprocessing is the authors' PIL path (haotian-liu/LLaVA llava/mm_utils.py process_anyres_image, which p-MoD
keeps unchanged), not transformers' LlavaNextImageProcessor (whose resize rounds differently):
- select_best_resolution over grid_pinpoints: the largest effective resolution, then the least waste, the
  first candidate on a tie (so the list order matters);
- resize_and_pad_image: resize (PIL's default, bicubic) so the image fits the chosen grid, new size by
  math.ceil and capped, pasted centred on a black canvas; cut row-major into CLIP-sized tiles;
- the base view: the whole image resized (squashed) to the CLIP input size, first;
- every view through CLIPImageProcessor (already CLIP-sized, so rescale and normalise only).
Encoding (llava_arch.py prepare_inputs_labels_for_multimodal, mm_patch_merge_type spatial_unpad): every view
through CLIP (layer -2, CLS dropped) and the projector; the tile features stitched back into one map, the
padding cut away by the authors' unpad_image (int() truncation), an image_newline vector ending every row,
the base view's tokens first. The token count depends on the image.
Pinpoints are [height, width] here (VisionConfig); the authors' config.json lists them as (width, height),
which this module's config.json reader and writer turn around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionModel

from .clip import clip_hidden_state
from .config import ConfigError, ModelConfig, VisionConfig
from .hosts import CheckpointError, ConfigSource, HfLayout, HostFamily, patch_grid_tokens
from .llava import (
    AUTHORS_LLAVA,
    HF_LLAVA,
    HF_LLAVA_LEGACY,
    LLAVA_RELEASES,
    clip_vision_config,
    mlp2x_gelu,
    normalise,
    run_stage,
)


@dataclass
class AnyresPixels:
    pixel_values: torch.Tensor  # [images, max views, 3, S, S]: base view then tiles, padded across the batch
    image_sizes: torch.Tensor  # [images, 2] original (height, width)

    def to(self, device) -> "AnyresPixels":
        return AnyresPixels(self.pixel_values.to(device), self.image_sizes.to(device))


def select_best_resolution(width: int, height: int, pinpoints: list[list[int]]) -> tuple[int, int]:
    """The authors' choice of grid for an image of (width, height); pinpoints [height, width]. -> (h, w)."""
    best, best_effective, best_waste = None, 0, math.inf
    for pin_h, pin_w in pinpoints:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (pin_h, pin_w), effective, waste
    return best


def resize_and_pad(image: Image.Image, target_w: int, target_h: int) -> Image.Image:
    """Fit into (target_w, target_h) keeping the aspect ratio (ceil, capped), centred on black."""
    width, height = image.size
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(height * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(width * scale_h), target_w), target_h
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.BICUBIC), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def unpad(features: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The authors' unpad_image: [C, H, W] of the padded grid -> the rows / columns the image covers."""
    cur_h, cur_w = features.shape[1:]
    if width / height > cur_w / cur_h:
        pad = (cur_h - int(height * (cur_w / width))) // 2
        return features[:, pad:cur_h - pad, :]
    pad = (cur_w - int(width * (cur_h / height))) // 2
    return features[:, :, pad:cur_w - pad]


class LlavaNextVision(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        vision = cfg.vision
        self.vision_cfg = vision
        self.num_image_tokens = cfg.num_image_tokens  # the largest image's; cfg.family's geometry
        self.grid_pinpoints = [list(p) for p in vision.grid_pinpoints]
        self.vision_tower = CLIPVisionModel(clip_vision_config(vision))
        self.projector = mlp2x_gelu(vision.hidden_size, cfg.llm.hidden_size)
        self.image_newline = nn.Parameter(torch.randn(cfg.llm.hidden_size) / cfg.llm.hidden_size**0.5)

    def grid_shape(self, width: int, height: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of (width, height)."""
        pin_h, pin_w = select_best_resolution(width, height, self.grid_pinpoints)
        size = self.vision_cfg.image_size
        return pin_h // size, pin_w // size

    def views(self, image: Image.Image) -> list[Image.Image]:
        """The base view then the tiles, row-major, as PIL images of the CLIP input size."""
        image = image.convert("RGB")
        size = self.vision_cfg.image_size
        pin_h, pin_w = select_best_resolution(*image.size, self.grid_pinpoints)
        padded = resize_and_pad(image, pin_w, pin_h)
        tiles = [padded.crop((x, y, x + size, y + size)) for y in range(0, pin_h, size) for x in range(0, pin_w, size)]
        return [image.resize((size, size), Image.Resampling.BICUBIC)] + tiles

    def preprocess(self, images: list[Image.Image]) -> AnyresPixels:
        stacks = [torch.stack([normalise(view, self.vision_cfg) for view in self.views(image)]) for image in images]
        most = max(stack.shape[0] for stack in stacks)
        pixels = torch.zeros(len(stacks), most, *stacks[0].shape[1:])
        for i, stack in enumerate(stacks):
            pixels[i, : stack.shape[0]] = stack
        sizes = torch.tensor([[image.size[1], image.size[0]] for image in images])
        return AnyresPixels(pixels, sizes)

    def meta_pixels(self, image_size: tuple[int, int] | None = None) -> AnyresPixels:
        """Pixels of preprocess()'s shapes on the meta device for an image of (width, height) (default: the
        pinpoint with the most tiles, the first on a tie), for FLOPs counting without weights."""
        size = self.vision_cfg.image_size
        if image_size is None:
            pin_h, pin_w = max(self.grid_pinpoints, key=lambda p: (p[0] // size) * (p[1] // size))
            image_size = (pin_w, pin_h)
        rows, cols = self.grid_shape(*image_size)
        return AnyresPixels(torch.empty(1, 1 + rows * cols, 3, size, size, device="meta"),
                            torch.tensor([[image_size[1], image_size[0]]]))

    def encode(self, pixels: AnyresPixels, stage=run_stage) -> list[torch.Tensor]:
        vision = self.vision_cfg
        sizes = [(int(h), int(w)) for h, w in pixels.image_sizes.tolist()]
        grids = [self.grid_shape(w, h) for h, w in sizes]
        counts = [1 + rows * cols for rows, cols in grids]
        dtype = self.projector[0].weight.dtype
        flat = torch.cat([p[:n] for p, n in zip(pixels.pixel_values, counts)]).to(dtype)
        hidden = stage("vision_encoder", lambda: clip_hidden_state(self.vision_tower, flat, vision.select_layer)[:, 1:])
        features = torch.split(stage("projector", lambda: self.projector(hidden)), counts)
        side = vision.image_size // vision.patch_size
        packed = []
        for feat, (height, width), (rows, cols) in zip(features, sizes, grids):
            base, tiles = feat[0], feat[1:]
            grid = tiles.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
            grid = unpad(grid, width, height)  # [C, H, W] without the padding
            newline = self.image_newline[:, None, None].expand(-1, grid.shape[1], 1).to(grid)
            grid = torch.cat([grid, newline], dim=-1).flatten(1, 2).transpose(0, 1)
            packed.append(torch.cat([base, grid]))
        return packed


# --- config.json ------------------------------------------------------------------------------------------
def claims(conf: dict) -> bool:
    """The authors' LLaVA-NeXT layouts (LLaVA-NeXT, p-MoD-LLaVA-NeXT) are "llava" ones with anyres."""
    return str(conf.get("image_aspect_ratio", "")).startswith("anyres")


def read_vision(vision: VisionConfig, source: ConfigSource) -> None:
    if "image_grid_pinpoints" not in source.conf:
        raise CheckpointError(f"{source.where}: image_aspect_ratio anyres without image_grid_pinpoints")
    # The authors' code reads each entry as (width, height) (haotian-liu/LLaVA mm_utils.py
    # select_best_resolution); ours are [height, width]. Order kept: it decides ties.
    vision.grid_pinpoints = [list(p)[::-1] for p in source.conf["image_grid_pinpoints"]]


def write_vision(cfg: ModelConfig) -> dict:
    return {"image_aspect_ratio": "anyres", "image_grid_pinpoints": [p[::-1] for p in cfg.vision.grid_pinpoints],
            "mm_patch_merge_type": "spatial_unpad"}


def read_hf_vision(vision: VisionConfig, conf: dict) -> None:
    vision.grid_pinpoints = [list(p) for p in conf["image_grid_pinpoints"]]  # llava-hf: [height, width]


def image_tokens(vision: VisionConfig) -> int:
    """The largest grid before unpadding: the base view + rows x (cols + image_newline)."""
    side = vision.image_size // vision.patch_size
    return side * side + max((h // vision.patch_size) * (w // vision.patch_size + 1) for h, w in vision.grid_pinpoints)


def check_vision(vision: VisionConfig) -> None:
    if not vision.grid_pinpoints:
        raise ConfigError("vision.grid_pinpoints is required for family 'llava-next'")
    for i, pin in enumerate(vision.grid_pinpoints):
        if len(pin) != 2 or any(v % vision.image_size for v in pin):
            raise ConfigError(f"vision.grid_pinpoints[{i}] = {pin} must be [height, width], multiples of "
                              f"vision.image_size ({vision.image_size})")


HOST_FAMILY = HostFamily(
    name="llava-next", frontend=LlavaNextVision, layout=AUTHORS_LLAVA,
    releases=LLAVA_RELEASES, read_vision=read_vision, write_vision=write_vision, claims=claims,
    hf=HfLayout("llava_next", HF_LLAVA, HF_LLAVA_LEGACY, read_vision=read_hf_vision),
    image_tokens=image_tokens, check_vision=check_vision, base_view_tokens=patch_grid_tokens,
    vision_fields=frozenset({"grid_pinpoints"}),
    legacy_vision_kind="anyres",
)
