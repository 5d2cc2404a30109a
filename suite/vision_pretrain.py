"""The vision tower's pretraining on drawn scenes: the CPU scale's stand-in for CLIP's pretraining.

LLaVA, LLaVA-HR, γ-MoD and p-MoD start from a pretrained vision encoder and keep it frozen while the connector and
the LLM learn (both stages). At CPU scale there is no pretrained encoder to start from, and a tower trained from
scratch through the LLM's loss learns to see slowly (results/reproduction/dense_sweep.md). So the reproduction
first pretrains its tower on the training scenes alone: every image token predicts what covers its cell of the
image (background, one of the colour-shape pairs, or the sign of one word: `tasks.scenes.patch_labels`), through a
linear head on the features the projector reads (CLIP's `select_layer`; LLaVA-HR's fused CLIP + ConvNeXt tokens,
adapters included). With `factored` > 0, two more linear heads name the colour and the shape of what covers a patch
apart, so that each is linearly readable from the features, for the LLM's attention to match a question's colour
and shape words against (from a tower trained on the colour-shape pairs alone, the dense model learnt the yes/no
questions late or not at all: results/reproduction/dense_sweep.md). The heads are dropped; the whole model (the
LLM at its seeded random init) is saved in the released layout, from which dense training starts.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class VisionPretrainConfig:
    model: str  # a variant with one tower and a projector: LLaVA-1.5's CLIP, LLaVA-HR's multipath (seeded init)
    images: str  # the corpus's training images, named as its training JSON names them (images/000000.png, ...)
    output: str
    steps: int = 800
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 30
    seed: int = 0
    probe_scenes: int = 256  # fresh scenes (a stream of their own) the held-out patch accuracy is measured on
    # > 0: also predict the colour and the shape of what covers a patch, each through a linear head of its own,
    # their losses weighted by this, so that the features name them apart (as CLIP's carry attributes a caption
    # names apart), not only as one of the colour-shape pairs
    factored: float = 0.0


def pretrain_vision(cfg: VisionPretrainConfig, scenes, image_size: int, log=print) -> dict:
    """Pretrain `cfg.model`'s tower on `scenes` (drawn as cfg.images holds them); returns the record."""
    from PIL import Image
    from tqdm import tqdm

    from modbench import models
    from modbench.models.checkpoints import release_layout, save_authors_checkpoint
    from modbench.suite.results import results_record, write_json_atomic
    from modbench.suite.train import adamw
    from modbench.tasks.scenes import (
        PATCH_CLASSES,
        PATCH_FACTORS,
        draw,
        patch_factor_labels,
        patch_labels,
        sample_scene,
    )

    torch.manual_seed(cfg.seed)  # the head's init
    model = models.build_model(models.get_variant(cfg.model), seed=cfg.seed)
    front = model.vision
    vision = front.vision_cfg
    # One tower (LLaVA-1.5's CLIP, LLaVA-HR's multipath) then a projector, its tokens a square grid over the image:
    # each token is labelled with what covers the centre of its cell
    grid = math.isqrt(model.cfg.num_image_tokens)
    if not getattr(front, "tower_output_cacheable", False) or grid * grid != model.cfg.num_image_tokens \
            or image_size % grid:
        raise ValueError(f"{cfg.model}: pretraining is written for one tower and a projector with a square grid "
                         f"of tokens over the {image_size} px image, not {model.cfg.family!r}'s front-end")
    cell = image_size // grid
    tower = front.vision_tower
    folder = Path(cfg.images)

    def read(i: int) -> Image.Image:  # loaded and closed one by one: thousands of open files hit the fd limit
        with Image.open(folder / f"{i:06d}.png") as image:
            return image.convert("RGB")

    pixels = None  # filled in place: a torch.cat of the chunks would hold every image twice (7 GB at 320 px)
    for start in range(0, len(scenes), 256):
        chunk = front.preprocess([read(i) for i in range(start, min(start + 256, len(scenes)))])
        if pixels is None:
            pixels = torch.empty(len(scenes), *chunk.shape[1:], dtype=chunk.dtype)
        pixels[start:start + len(chunk)] = chunk
    labels = torch.tensor([patch_labels(s, image_size, cell) for s in scenes])
    probe_rng = random.Random(f"vision-probe-{cfg.seed}")
    probe = [sample_scene(probe_rng) for _ in range(cfg.probe_scenes)]
    probe_pixels = front.preprocess([draw(s, image_size) for s in probe])
    probe_labels = torch.tensor([patch_labels(s, image_size, cell) for s in probe])

    head = torch.nn.Linear(vision.hidden_size, len(PATCH_CLASSES))
    # factored: class index -> its colour's / shape's index, each predicted by a head of its own
    factors = {name: (torch.tensor(patch_factor_labels(name)), torch.nn.Linear(vision.hidden_size, len(values)))
               for name, values in PATCH_FACTORS.items()} if cfg.factored else {}
    params = [*tower.parameters(), *head.parameters(), *(p for _, h in factors.values() for p in h.parameters())]
    optimizer = adamw(params, lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / cfg.warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))

    def pretraining_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = front.tower_output(x).flatten(0, 1)
        y = y.flatten()
        loss = torch.nn.functional.cross_entropy(head(features), y)
        for factor_of, factor_head in factors.values():
            loss = loss + cfg.factored * torch.nn.functional.cross_entropy(factor_head(features), factor_of[y])
        return loss

    order = torch.Generator().manual_seed(cfg.seed)
    tower.train()
    started = time.perf_counter()
    losses = []
    for _ in tqdm(range(cfg.steps), desc="pretrain vision", unit="step", dynamic_ncols=True):
        batch = torch.randint(0, len(scenes), (cfg.batch_size,), generator=order)
        loss = pretraining_loss(pixels[batch], labels[batch])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - started
    tower.eval()
    with torch.no_grad():
        probe_features = front.tower_output(probe_pixels)
        predicted = head(probe_features).argmax(-1)
    accuracy = {"all": predicted.eq(probe_labels).float().mean().item()}
    first_sign = next(i for i, name in enumerate(PATCH_CLASSES) if name.startswith("sign "))
    for name, mask in (("objects", (probe_labels > 0) & (probe_labels < first_sign)),
                       ("signs", probe_labels >= first_sign)):
        accuracy[name] = predicted[mask].eq(probe_labels[mask]).float().mean().item()
    objects = (probe_labels > 0) & (probe_labels < first_sign)
    for name, (factor_of, factor_head) in factors.items():  # of the patches an object covers
        with torch.no_grad():
            named = factor_head(probe_features).argmax(-1)
        accuracy[name] = named[objects].eq(factor_of[probe_labels][objects]).float().mean().item()
    log(f"vision tower: held-out patch accuracy {accuracy['all']:.3f} (objects {accuracy['objects']:.3f}, signs "
        f"{accuracy['signs']:.3f}) after {cfg.steps} steps, {seconds:.0f} s")
    save_authors_checkpoint(model, cfg.output, kind=release_layout(model.cfg), fmt="safetensors")
    # The tower stays frozen from here on, so what it hands the projector for each training image is computed
    # once, here, and training reads it instead of running the tower (suite.train_data.TowerFeatures).
    with torch.no_grad():
        features = torch.cat([front.tower_output(pixels[i:i + 256]) for i in range(0, len(pixels), 256)])
    from modbench.suite.train_data import TowerFeatures

    # named as the training JSON names the images (tasks.scenes.write_corpus: images/000000.png, ...)
    TowerFeatures.write(Path(cfg.output) / TowerFeatures.FILE, [f"{folder.name}/{i:06d}.png" for i in range(len(scenes))],
                        features, tower)
    record = results_record("vision-pretrain", asdict(cfg), status="ok", model=cfg.model, steps=cfg.steps,
                            scenes=len(scenes), wall_seconds=seconds, final_loss=sum(losses[-10:]) / len(losses[-10:]),
                            held_out_patch_accuracy=accuracy, probe_scenes=cfg.probe_scenes,
                            classes=list(PATCH_CLASSES), factored=cfg.factored,
                            files={"model": ".", "tower_features": TowerFeatures.FILE})
    write_json_atomic(Path(cfg.output) / "train.json", record)  # named as a training's: the run records copy it
    return record
