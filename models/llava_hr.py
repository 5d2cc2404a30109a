"""LLaVA-HR vision front-end: CLIP (fast, low resolution) + ConvNeXt (slow, high resolution) joined by
mixture-of-resolution adapters.

As ../shared/reference/README.md and the authors' released model describe it:
- the image is padded to a square with the CLIP mean colour, truncated as LLaVA-HR's process_images does
  (luogen1996/LLaVA-HR llava_hr/mm_utils.py: tuple(int(x*255) for x in image_mean)), and resized (bicubic)
  to input_image_size (1024);
- slow branch: the whole timm ConvNeXt (stem + 4 stages) at 1024 -> [B, C_slow, 32, 32];
- fast branch: the same image resized (bilinear, align_corners) to 448, CLIP patch embedding with the
  position embeddings resampled 24^2 -> 32^2 (bicubic, antialiased), CLS dropped, pre-layernorm, then the
  CLIP blocks in four quarters with an adapter after each of the first three (after blocks 6/12/18 of 24)
  when the tower was trained (freeze_vision false);
- fusion: Linear(fast) + Linear(slow tokens) -> 1024 tokens of CLIP width -> mlp2x_gelu projector.
All CLIP blocks run (no post-layernorm, no select layer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import CLIPVisionModel

from .clip import clip_vision_config
from .config import ConfigError, ConvNextConfig, ModelConfig, VisionConfig
from .hosts import CheckpointError, ConfigSource, HostFamily, KeyLayout
from .llava import (
    AUTHORS_LLM_AND_PROJECTOR,
    LLAVA_RELEASES,
    mlp2x_gelu,
    pad_resize_normalise,
    run_stage,
)


def resample_position_embeddings(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1 + g*g, C] -> [1 + grid*grid, C]: the prefix (CLS) kept, the patch grid resampled bicubically."""
    prefix, patches = pos[:1], pos[1:]
    old = int(math.isqrt(patches.shape[0]))
    if old == grid:
        return pos
    dtype = pos.dtype
    patches = patches.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(dtype)
    return torch.cat([prefix, patches])


def match_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, L, C] on a sqrt(L) grid -> [B, grid*grid, C]: average-pooled down or bilinearly (align_corners)
    upsampled."""
    batch, length, channels = tokens.shape
    side = int(math.isqrt(length))
    if side == grid:
        return tokens
    maps = tokens.transpose(1, 2).reshape(batch, channels, side, side)
    if side > grid:
        maps = F.avg_pool2d(maps, side // grid, side // grid)
    else:
        maps = F.interpolate(maps.float(), size=(grid, grid), mode="bilinear", align_corners=True).to(tokens.dtype)
    return maps.flatten(2).transpose(1, 2)


class MixtureOfResolutionAdapter(nn.Module):
    """Injects slow (ConvNeXt) features into the fast (CLIP) token stream through a tanh gate."""

    def __init__(self, fast_dim: int, slow_dim: int) -> None:
        super().__init__()
        self.slow_conv = nn.Conv2d(slow_dim, slow_dim, 1)
        self.slow_proj = nn.Conv2d(slow_dim, fast_dim, 1)
        self.fast_conv = nn.Conv2d(fast_dim, fast_dim, 7, padding=3, groups=fast_dim)
        self.fast_proj = nn.Conv2d(fast_dim, fast_dim, 1)
        self.gate = nn.Sequential(nn.Linear(2 * fast_dim, fast_dim // 2), nn.GELU(), nn.Linear(fast_dim // 2, 1))
        # Released init: xavier convs, zero projections, so a fresh adapter starts as the identity.
        for conv in (self.slow_conv, self.fast_conv):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        for proj in (self.slow_proj, self.fast_proj):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, fast: torch.Tensor, slow: torch.Tensor) -> torch.Tensor:
        batch, length, dim = fast.shape
        grid = int(math.isqrt(length))
        slow = self.slow_proj(F.gelu(self.slow_conv(slow))).flatten(2).transpose(1, 2)
        slow = match_grid(slow, grid)
        maps = fast.transpose(1, 2).reshape(batch, dim, grid, grid)
        maps = maps + self.fast_proj(F.gelu(self.fast_conv(maps)))
        fast = maps.flatten(2).transpose(1, 2)
        gate = self.gate(torch.cat([fast, slow], dim=-1).mean(dim=1)).unsqueeze(1)
        return fast + slow * gate.tanh()


class ResolutionFusion(nn.Module):
    """Final fusion: Linear(fast) + Linear(slow tokens on the fast grid)."""

    def __init__(self, fast_dim: int, slow_dim: int) -> None:
        super().__init__()
        self.fast_proj = nn.Linear(fast_dim, fast_dim)
        self.slow_proj = nn.Linear(slow_dim, fast_dim)

    def forward(self, fast: torch.Tensor, slow: torch.Tensor) -> torch.Tensor:
        slow = match_grid(slow.flatten(2).transpose(1, 2), int(math.isqrt(fast.shape[1])))
        return self.fast_proj(fast) + self.slow_proj(slow)


class MultiPathVisionTower(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        vision = cfg.vision
        conv = vision.convnext
        self.vision_cfg = vision
        from timm.models.convnext import ConvNeXt  # here, not at import: timm costs seconds to import

        self.fast_vision_tower = CLIPVisionModel(clip_vision_config(vision))
        self.slow_vision_tower = ConvNeXt(num_classes=conv.num_classes, depths=tuple(conv.depths), dims=tuple(conv.dims),
                                          head_hidden_size=conv.head_hidden_size or None, norm_eps=conv.norm_eps)
        fast_dim, slow_dim = vision.hidden_size, conv.dims[-1]
        if vision.adapters:
            self.align_stages_latent = nn.ModuleList(
                MixtureOfResolutionAdapter(fast_dim, slow_dim) for _ in range(3)
            )
        self.align_stages = nn.ModuleList([ResolutionFusion(fast_dim, slow_dim)])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self.vision_cfg
        clip = getattr(self.fast_vision_tower, "vision_model", self.fast_vision_tower)  # flat in transformers 5
        dtype = clip.embeddings.patch_embedding.weight.dtype
        pixels = pixels.to(dtype)
        size = fast_image_size(vision)
        fast_pixels = F.interpolate(pixels.float(), size=(size, size), mode="bilinear", align_corners=True)
        patches = clip.embeddings.patch_embedding(fast_pixels.to(dtype)).flatten(2).transpose(1, 2)
        grid = size // vision.patch_size
        pos = resample_position_embeddings(clip.embeddings.position_embedding.weight, grid)
        fast = clip.pre_layrnorm(patches + pos[1:])  # CLS dropped before the blocks, as released

        slow_net = self.slow_vision_tower
        slow = slow_net.stages(slow_net.stem(pixels))

        blocks = clip.encoder.layers
        quarter = len(blocks) // 4
        for index, block in enumerate(blocks):
            fast = block(fast, None)
            if isinstance(fast, tuple):
                fast = fast[0]
            if vision.adapters and (index + 1) % quarter == 0 and index + 1 < len(blocks):
                fast = self.align_stages_latent[(index + 1) // quarter - 1](fast, slow)
        return self.align_stages[0](fast, slow)


class LlavaHrVision(nn.Module):
    # The multipath tower then the projector: a frozen tower's output may be computed once (as LlavaVision's)
    tower_output_cacheable = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.vision_cfg = cfg.vision
        self.num_image_tokens = cfg.num_image_tokens  # the largest image's; cfg.family's geometry
        self.vision_tower = MultiPathVisionTower(cfg)
        self.projector = mlp2x_gelu(cfg.vision.hidden_size, cfg.llm.hidden_size)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return pad_resize_normalise(images, self.vision_cfg.input_image_size, self.vision_cfg)

    def meta_pixels(self, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """preprocess()'s output shape for one image (padded square, any size), on the meta device."""
        size = self.vision_cfg.input_image_size
        return torch.empty(1, 3, size, size, device="meta")

    def tower_output(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the projector reads: the fused CLIP + ConvNeXt tokens."""
        return self.vision_tower(pixel_values)

    def encode(self, pixel_values: torch.Tensor, stage=run_stage) -> torch.Tensor:
        # vision_encoder: CLIP, ConvNeXt, the resolution adapters and the fusion
        features = stage("vision_encoder", lambda: self.tower_output(pixel_values))
        return stage("projector", lambda: self.projector(features))


# --- checkpoint layout and config.json ------------------------------------------------------------------------
# LLaVA-HR's ConvNeXt is the authors' copy of timm's (luogen1996/LLaVA-HR, also in Yaxin9Luo/Gamma-MOD:
# multimodal_encoder/convnext.py) with the block's layer scale renamed `weight`, as every LLaVA-HR, LLaVA-HR-X
# and γ-MoD-LLaVA-HR release holds it.
AUTHORS_LLAVA_HR = KeyLayout("LLaVA-HR", (
    *AUTHORS_LLM_AND_PROJECTOR,
    ("vision.vision_tower.fast_vision_tower.", "model.vision_tower.fast_vision_tower.vision_tower.vision_model."),
    ("vision.vision_tower.slow_vision_tower.", "model.vision_tower.slow_vision_tower.vision_tower."),
    ("vision.vision_tower.align_stages_latent.", "model.vision_tower.align_stages_latent."),
    ("vision.vision_tower.align_stages.", "model.vision_tower.align_stages."),
), layer_scale="weight")


def convnext_from_shapes(shapes: dict[str, tuple[int, ...]], prefix: str, stages: str = "stages") -> ConvNextConfig:
    """A timm ConvNeXt's sizes from its weights' names and shapes (config.json does not give them)."""
    depths, dims = [], []
    for stage in range(4):
        head = f"{prefix}{stages}.{stage}.blocks."
        blocks = {key[len(head):].split(".")[0] for key in shapes if key.startswith(head)}
        if not blocks:
            raise CheckpointError(f"no weights under {head}")
        depths.append(len(blocks))
        dims.append(shapes[f"{head}0.conv_dw.weight"][0])
    head = shapes.get(f"{prefix}head.pre_logits.fc.weight")
    classifier = shapes.get(f"{prefix}head.fc.weight")
    return ConvNextConfig(depths=depths, dims=dims, head_hidden_size=head[0] if head is not None else 0,
                          num_classes=classifier[0] if classifier is not None else 0, timm_name="")


def claims(conf: dict) -> bool:
    """LLaVA-HR releases are "llava" (or γ-MoD's "mod_llava_llama") layouts with is_multipath_encoder."""
    return bool(conf.get("is_multipath_encoder"))


def read_vision(vision: VisionConfig, source: ConfigSource) -> None:
    conf = source.conf
    vision.input_image_size = int(conf.get("input_image_size", 1024))
    vision.adapters = not conf.get("freeze_vision", False)
    vision.convnext = convnext_from_shapes(source.shapes(), "model.vision_tower.slow_vision_tower.vision_tower.")
    slow_name = str(conf.get("vision_tower_slow", ""))
    vision.convnext.timm_name = slow_name
    if "xxlarge" in slow_name:  # the authors build convnext_xxlarge with LayerNorm eps 1e-5
        vision.convnext.norm_eps = 1e-5


def write_vision(cfg: ModelConfig) -> dict:
    vision = cfg.vision
    return {"is_multipath_encoder": True, "input_image_size": vision.input_image_size,
            "vision_tower_slow": vision.convnext.timm_name or "convnext_large_mlp.clip_laion2b_ft_320",
            "freeze_vision": not vision.adapters}


def fast_image_size(vision: VisionConfig) -> int:
    """The fast (CLIP) branch's input: input_image_size / 32 patches per side (the ConvNeXt grid), at least
    image_size; 448 for LLaVA-HR's 1024 px."""
    return max(vision.input_image_size // 32 * vision.patch_size, vision.image_size)


def image_tokens(vision: VisionConfig) -> int:
    return (fast_image_size(vision) // vision.patch_size) ** 2


def check_vision(vision: VisionConfig) -> None:
    if vision.convnext is None or vision.input_image_size <= 0:
        raise ConfigError("vision.convnext and vision.input_image_size are required for family 'llava-hr'")
    if vision.input_image_size % 32:
        raise ConfigError("vision.input_image_size must be a multiple of 32 (the ConvNeXt stride)")
    if (vision.input_image_size // 32) ** 2 != image_tokens(vision):
        raise ConfigError("vision: the ConvNeXt grid (input/32) must match the CLIP grid")
    if vision.num_layers % 4:
        raise ConfigError("vision.num_layers must be a multiple of 4 (adapters after each quarter)")


HOST_FAMILY = HostFamily(
    name="llava-hr", frontend=LlavaHrVision, layout=AUTHORS_LLAVA_HR,
    releases=LLAVA_RELEASES, read_vision=read_vision, write_vision=write_vision, claims=claims,
    image_tokens=image_tokens, check_vision=check_vision,
    vision_fields=frozenset({"convnext", "input_image_size", "adapters"}),
    legacy_vision_kind="multipath",
)
