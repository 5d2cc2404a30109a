"""Mini-Gemini-HD vision front-end: CLIP low-resolution views + ConvNeXt high-resolution map, joined by
patch-info mining.

As ../shared/reference/README.md and the released model describe it:
- preprocessing: pad to a square with the CLIP mean colour, truncated as MGM's process_images does
  (dvlab-research/MGM mgm/mm_utils.py: tuple(int(x*255) for x in image_mean)), resize to the high-resolution size (1536) and
  normalise: that is the ConvNeXt input; the same tensor resized (bilinear) to grid x 336 is cut into grid^2
  crops (row-major), and resized again to 336 for the global view: images = [crops..., global];
- CLIP (layer -2, CLS dropped) on every view -> 576 tokens each;
- ConvNeXt stem + 4 stages, each stage upsampled (bilinear) to the stage-0 map (stride 4) and concatenated
  (2880 channels for ConvNeXt-L);
- patch-info mining: each low-resolution token (query: LayerNorm + Linear) attends over the high-resolution
  features of its own region (keys / values: LayerNorm + Linear each), the attention averaged -> T;
  the global view mines from the map downsampled by the grid factor;
- tokens [global, crops...] (5 x 576 = 2880), features mlp2x_gelu(x + T).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import CLIPVisionModel

from .clip import clip_hidden_state
from .config import ConfigError, ModelConfig, VisionConfig
from .hosts import ConfigSource, HostFamily, KeyLayout, Release
from .llava import AUTHORS_LLM_AND_PROJECTOR, clip_vision_config, mlp2x_gelu, pad_resize_normalise, run_stage
from .llava_hr import convnext_from_shapes


@dataclass
class HdPixels:
    views: torch.Tensor  # [B, grid^2 + global, 3, S, S]: crops row-major, then the global view
    high_res: torch.Tensor  # [B, 3, A, A]: the ConvNeXt input

    def to(self, device) -> "HdPixels":
        return HdPixels(self.views.to(device), self.high_res.to(device))


class ConvNextTrunk(nn.Module):
    """A timm ConvNeXt's stem and stages, returning all four stages at the stage-0 resolution, concatenated."""

    def __init__(self, depths, dims) -> None:
        super().__init__()
        from timm.models.convnext import ConvNeXt  # here, not at import: timm costs seconds to import

        net = ConvNeXt(num_classes=0, depths=tuple(depths), dims=tuple(dims))
        self.vision_stem = net.stem
        self.vision_stages = net.stages

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.vision_stem(pixels)
        maps = []
        for stage in self.vision_stages:
            x = stage(x)
            maps.append(x)
        size = maps[0].shape[-2:]
        up = [maps[0]] + [F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False).to(m.dtype)
                          for m in maps[1:]]
        return torch.cat(up, dim=1)


def layer_norm_linear(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))


class MgmHdVision(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        vision = cfg.vision
        self.vision_cfg = vision
        self.num_image_tokens = cfg.num_image_tokens  # the largest image's; cfg.family's geometry
        self.vision_tower = CLIPVisionModel(clip_vision_config(vision))
        self.vision_tower_aux = ConvNextTrunk(vision.convnext.depths, vision.convnext.dims)
        aux_dim = sum(vision.convnext.dims)
        self.query_projector = layer_norm_linear(vision.hidden_size, vision.hidden_size)
        self.aux_projector = layer_norm_linear(aux_dim, vision.hidden_size)
        self.val_projector = layer_norm_linear(aux_dim, vision.hidden_size)
        self.projector = mlp2x_gelu(vision.hidden_size, cfg.llm.hidden_size)

    def preprocess(self, images: list[Image.Image]) -> HdPixels:
        vision = self.vision_cfg
        high = pad_resize_normalise(images, vision.input_image_size, vision)
        size, grid = vision.image_size, vision.image_grid
        low = F.interpolate(high, size=(size * grid, size * grid), mode="bilinear", align_corners=False)
        batch = low.shape[0]
        crops = low.reshape(batch, 3, grid, size, grid, size).permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, 3, size, size)
        views = [crops]
        if vision.image_global:
            views.append(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, None])
        return HdPixels(torch.cat(views, dim=1), high)

    def mine(self, tokens: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Patch-info mining. tokens [N, L, C] on a sqrt(L) grid; high [N, C_aux, H, W] covering the same view."""
        n, length, _ = tokens.shape
        side = int(length**0.5)
        region = high.shape[-1] // side
        regions = high.permute(0, 2, 3, 1).reshape(n, side, region, side, region, -1)
        regions = regions.permute(0, 1, 3, 2, 4, 5).reshape(n, length, region * region, -1)
        query = self.query_projector(tokens)
        key = self.aux_projector(regions)
        value = self.val_projector(regions)
        scores = (query[:, :, None] @ key.transpose(-1, -2)) / key.shape[-1] ** 0.5  # [N, L, 1, region^2]
        return (scores.nan_to_num().softmax(dim=-1) @ value).mean(dim=2)

    def meta_pixels(self, image_size: tuple[int, int] | None = None) -> HdPixels:
        """preprocess()'s output shapes for one image (padded square, any size), on the meta device."""
        vision = self.vision_cfg
        n_views = vision.image_grid**2 + int(vision.image_global)
        size, high = vision.image_size, vision.input_image_size
        return HdPixels(torch.empty(1, n_views, 3, size, size, device="meta"),
                        torch.empty(1, 3, high, high, device="meta"))

    def encode(self, pixels: HdPixels, stage=run_stage) -> torch.Tensor:
        vision = self.vision_cfg
        dtype = self.projector[0].weight.dtype
        views = pixels.views.to(dtype)
        batch, n_views = views.shape[:2]
        grid = vision.image_grid
        hidden = stage("vision_encoder", lambda: clip_hidden_state(self.vision_tower, views.flatten(0, 1),
                                                                   vision.select_layer))
        feats = hidden[:, 1:].reshape(batch, n_views, -1, vision.hidden_size)
        high = stage("vision_encoder_aux", lambda: self.vision_tower_aux(pixels.high_res.to(dtype)))
        crops = feats[:, : grid * grid].flatten(0, 1)
        c_aux, h, w = high.shape[1:]
        high_crops = high.reshape(batch, c_aux, grid, h // grid, grid, w // grid).permute(0, 2, 4, 1, 3, 5)
        mined = stage("patch_info_mining", lambda: self.mine(crops, high_crops.reshape(-1, c_aux, h // grid, w // grid)))
        tokens = [crops.reshape(batch, -1, vision.hidden_size)]
        mined_all = [mined.reshape(batch, -1, vision.hidden_size)]
        if vision.image_global:
            low_high = F.interpolate(high.float(), scale_factor=1 / grid, mode="bilinear", align_corners=False)
            glob = feats[:, -1]
            tokens.insert(0, glob)
            mined_all.insert(0, stage("patch_info_mining", lambda: self.mine(glob, low_high.to(dtype))))
        return stage("projector", lambda: self.projector(torch.cat(tokens, dim=1) + torch.cat(mined_all, dim=1)))


# --- checkpoint layout and config.json ------------------------------------------------------------------------
# dvlab-research/MGM mgm_arch.py; its ConvNeXt is open_clip's timm trunk (openclip_encoder.py) saved as built,
# so its releases keep timm's layer-scale name `gamma`.
MGM = KeyLayout("Mini-Gemini", (
    *AUTHORS_LLM_AND_PROJECTOR,
    ("vision.vision_tower_aux.", "model.vision_tower_aux."),
    ("vision.query_projector.", "model.vlm_uni_query_projector."),
    ("vision.aux_projector.", "model.vlm_uni_aux_projector."),
    ("vision.val_projector.", "model.vlm_uni_val_projector."),
    ("vision.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
), layer_scale="gamma")
MGM_RELEASES = {"dense": Release("mgm", "MGMLlamaForCausalLM"),
                "gamma": Release("mod_mgm", "MoDMGMLlamaForCausalLM")}  # Yaxin9Luo/Gamma-MOD gamma_mod/MGM/


def read_vision(vision: VisionConfig, source: ConfigSource) -> None:
    conf = source.conf
    vision.input_image_size = int(conf.get("image_size_aux", 1536))
    vision.image_grid = int(conf.get("image_grid", 1))
    vision.image_global = bool(conf.get("image_global", False))
    vision.convnext = convnext_from_shapes(source.shapes(), "model.vision_tower_aux.", "vision_stages")


def write_vision(cfg: ModelConfig) -> dict:
    vision = cfg.vision
    return {"mm_vision_tower_aux": vision.convnext.timm_name or "openclip-convnext-large-d-320",
            "image_size_aux": vision.input_image_size, "image_grid": vision.image_grid,
            "image_global": vision.image_global, "mm_hidden_size_aux": sum(vision.convnext.dims)}


def image_tokens(vision: VisionConfig) -> int:
    """One CLIP grid per crop, plus one for the global view."""
    side = vision.image_size // vision.patch_size
    return side * side * (vision.image_grid**2 + int(vision.image_global))


def check_vision(vision: VisionConfig) -> None:
    side = vision.image_size // vision.patch_size
    if vision.convnext is None or vision.input_image_size <= 0 or vision.image_grid < 1:
        raise ConfigError("vision.convnext, vision.input_image_size and vision.image_grid are required "
                          "for family 'mgm-hd'")
    if vision.input_image_size % (4 * vision.image_grid * side):
        raise ConfigError("vision.input_image_size must be a multiple of 4 x image_grid x tokens per side "
                          "(each low-resolution token mines a whole high-resolution region)")


HOST_FAMILY = HostFamily(
    name="mgm-hd", frontend=MgmHdVision, layout=MGM, releases=MGM_RELEASES,
    read_vision=read_vision, write_vision=write_vision, image_tokens=image_tokens, check_vision=check_vision,
    vision_fields=frozenset({"convnext", "input_image_size", "image_grid", "image_global"}),
    legacy_vision_kind="mgm-hd",
)
