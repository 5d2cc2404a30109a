"""`modbench train`: dense, γ-MoD and p-MoD training on LLaVA's instruction data, through accelerate.

One process on a CPU; `accelerate launch` / torchrun for data parallelism (DDP on GPUs, gloo on a CPU; each
process loads its share of a global batch and the losses are weighted so that the step equals one process's on
the whole batch); DeepSpeed ZeRO-2 / ZeRO-3 through an accelerate config file (configs/accelerate/), as the
authors train. Stages as the papers run them: `pretrain` trains the connector (projector, adapters) only;
`finetune` trains connector + LLM (+ routers), the vision towers frozen unless `train_vision`. A dense model
converted to γ-MoD / p-MoD keeps every weight; only the routers are new.

Deterministic on a CPU: the same config, seed and data give bitwise-identical weights, and `resume` continues
an interrupted run to the same weights (data order is a function of (seed, epoch); accelerate saves the
optimizer, scheduler and RNG states). Checkpoints are written to a temporary folder and renamed, so a run
killed while saving leaves the previous one readable.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from modbench.models.config import SCHEMES as MODEL_SCHEMES

SCHEMES = ("", *MODEL_SCHEMES)  # "": the model's own
STAGES = ("pretrain", "finetune")
ROUTERS = ("shared", "per-layer")
MIXED_PRECISION = ("no", "bf16", "fp16")
LOSS_WEIGHTINGS = ("token", "turn")


@dataclass
class TrainConfig:
    """Every hyper-parameter of a training run. A YAML file (`--config`) is a view of it; unknown keys are
    errors; command-line flags override the file."""

    model: str = ""  # a variant (trained from its random init) or a checkpoint directory
    data: str = ""  # LLaVA instruction JSON
    output: str = ""  # the trained model in the released layout, plus train.json, train_log.jsonl, checkpoints/
    images: str = ""  # image folder (default: the JSON's folder)
    # a file of the frozen tower's output per training image (suite.train_data.TowerFeatures, as the
    # reproduction's vision pretraining writes it): the tower is then not run in training, only the projector
    tower_features: str = ""
    scheme: str = ""  # dense | gamma | pmod; "" keeps the model's own; a dense model is converted
    mod_layers: str = ""  # explicit MoD layers, e.g. "3-30" or "1,2,4"
    arank_keep: int = 0  # γ-MoD: every layer but the k highest-ARank ones of the dense model
    arank_samples: int = 16  # image samples of the training data ARank reads (one prefill each)
    mod_pattern: str = ""  # all | 1of2 | 2of3 (γ-MoD Table 1's hand-made deployments)
    router: str = "shared"  # γ-MoD: shared | per-layer
    masked: str = "qa"  # γ-MoD masked routing learning: force-kept types none | q | qa
    skip_fraction: float = 0.5  # γ-MoD: share of the routable tokens each MoD layer skips in training
    ratios: str = ""  # p-MoD: kept ratio per --mod-layers layer ("0.5" for all, or a comma list)
    stage: str = "finetune"
    steps: int = 0  # optimizer steps (or --epochs)
    epochs: float = 0.0
    batch_size: int = 8  # per process and micro-step
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    train_vision: bool = False
    seed: int = 0
    num_workers: int = 0
    # LLaVA's and γ-MoD's fine-tuning recipe (`--group_by_modality_length True`): every batch holds image samples
    # only or text-only samples only (suite.train_data.modality_grouped_order); off: a plain seeded permutation
    group_by_modality_length: bool = False
    # token: the LM loss is the mean over answer tokens (LLaVA's); turn: the mean over answers of each answer's
    # mean, so a one-token "Yes" weighs as much as a thirty-token caption (suite.train.turn_weights)
    loss_weighting: str = "token"
    save_every: int = 0  # steps between resumable checkpoints (0: only at the end)
    keep_checkpoints: int = 1
    log_every: int = 10
    skip_bad_samples: bool = False
    resume: bool = False
    device: str = ""  # "" = accelerate's choice (cuda when available)
    progress: bool = True

    def validate(self) -> None:
        from modbench.models.config import MASKED_TOKENS, ConfigError

        checks = [
            (bool(self.model), "model is required"), (bool(self.data), "data is required"),
            (bool(self.output), "output is required"),
            (self.scheme in SCHEMES, f"scheme must be one of {SCHEMES[1:]}"),
            (self.stage in STAGES, f"stage must be one of {STAGES}"),
            (self.router in ROUTERS, f"router must be one of {ROUTERS}"),
            (self.masked in MASKED_TOKENS, f"masked must be one of {MASKED_TOKENS}"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}"),
            (self.loss_weighting in LOSS_WEIGHTINGS, f"loss_weighting must be one of {LOSS_WEIGHTINGS}"),
            ((self.steps > 0) != (self.epochs > 0), "give exactly one of steps or epochs"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (sum(map(bool, (self.mod_layers, self.arank_keep, self.mod_pattern))) <= 1,
             "choose at most one of mod_layers, arank_keep, mod_pattern"),
            (0.0 <= self.skip_fraction < 1.0, "skip_fraction must be in [0, 1)"),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)"),
            (not (self.tower_features and self.train_vision),
             "tower_features are a frozen tower's output: not with train_vision"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train config: {message}")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "TrainConfig":
        import yaml

        from modbench.models.config import from_dict

        data = yaml.safe_load(Path(path).read_text()) or {}
        return from_dict(cls, {**data, **(overrides or {})}, f"{path}")


# ---------------------------------------------------------------------------------------------------------
# the model


def load_base_model(cfg: TrainConfig):
    """A variant (its random init, seeded) or a checkpoint directory, in float32 (mixed precision is
    accelerate's autocast, not the parameters' dtype)."""
    from modbench.models.resolver import build, resolve

    return build(resolve(cfg.model, {"dtype": "float32"}), seed=cfg.seed)


def choose_scheme(model, cfg: TrainConfig, dataset=None, layers: list[int] | None = None, log=print):
    """Convert `model` as `cfg.scheme` asks (a dense model to γ-MoD / p-MoD; the MoD layers explicit, by ARank on
    this dense model, or by pattern; `layers` overrides the choice, as a resumed run replays it). Returns
    (model, how the MoD layers were chosen)."""
    from modbench.models.config import ConfigError
    from modbench.models.convert import convert_to_mod, mod_layers_by_pattern, parse_layers
    from modbench.models.routing import scheme_class

    scheme = cfg.scheme or model.cfg.mod.scheme
    num_layers = model.cfg.llm.num_layers
    if scheme == model.cfg.mod.scheme:
        if cfg.mod_layers or cfg.arank_keep or cfg.mod_pattern:
            raise ConfigError(f"train config: the model is already {scheme}; MoD layers are chosen only when "
                              "converting a dense model")
        return model, {"how": "the model's own", "layers": list(model.language_model.model.routing.mod_layers)}
    if scheme == "dense" or model.cfg.mod.scheme != "dense":
        raise ConfigError(f"train config: cannot convert a {model.cfg.mod.scheme} model to {scheme}")
    if layers is not None:
        choice = {"how": "replayed from the checkpoint", "layers": layers}
    elif cfg.mod_layers:
        layers = parse_layers(cfg.mod_layers, num_layers)
        choice = {"how": "explicit", "layers": layers}
    elif cfg.mod_pattern:
        layers = mod_layers_by_pattern(num_layers, cfg.mod_pattern)
        choice = {"how": f"pattern {cfg.mod_pattern}", "layers": layers}
    elif cfg.arank_keep:
        from modbench.models.arank import compute_arank

        if dataset is None:
            raise ConfigError("train config: arank_keep needs the training data")
        from modbench.models.arank import select_mod_layers

        result = compute_arank(model, arank_samples(dataset, cfg.arank_samples), num_dense=cfg.arank_keep)
        # The first and the last layer stay dense besides (the authors keep them dense when generating; at 7B
        # ARank keeps them anyway: {0, 1, 2, 31}).
        layers = select_mod_layers(result.per_layer, cfg.arank_keep, always_dense=(0, num_layers - 1))
        choice = {"how": f"ARank ({cfg.arank_keep} highest of layers 1..L-2 stay dense, and 0, L-1)",
                  "layers": layers, "arank": result.to_dict()}
        log(f"ARank per layer {[round(v, 2) for v in result.per_layer]} -> MoD layers {layers}")
    else:  # none given: the scheme's own schedule, or its training_spec says what it needs
        layers = []
        choice = {"how": scheme_class(scheme).own_schedule or "none given"}
    model = convert_to_mod(model, mod_spec(cfg, scheme, layers), seed=cfg.seed)
    choice["layers"] = list(model.language_model.model.routing.mod_layers)
    return model, choice


def mod_spec(cfg: TrainConfig, scheme: str, layers: list[int]):
    """The ModSpec `scheme` makes of the training options (each scheme reads those it has)."""
    from modbench.models.config import ConfigError
    from modbench.models.routing import scheme_class

    try:
        return scheme_class(scheme).training_spec(
            layers, skip_fraction=cfg.skip_fraction, shared_router=cfg.router == "shared", masked=cfg.masked,
            ratios=[float(v) for v in cfg.ratios.split(",")] if cfg.ratios else [])
    except ConfigError as error:
        raise ConfigError(f"train config: {error}") from error


def arank_samples(dataset, n: int) -> list[tuple[str, object]]:
    """(prompt, image) of the first n image samples: their first question, as the evaluation prompts it."""
    from modbench.models.prompt import vicuna_v1

    out = []
    for record in dataset.records:
        if len(out) >= n:
            break
        if not isinstance(record, dict) or not record.get("image"):
            continue
        try:  # the image itself, even where training reads the tower's cached output instead
            image = dataset.read_image(record["image"])
        except ValueError:
            continue
        out.append((vicuna_v1(record["conversations"][0]["value"]), image))
    if not out:
        raise ValueError("ARank: the training data has no readable image sample")
    return out


def tower_modules(front_end) -> list[torch.nn.Module]:
    """The pretrained vision towers (CLIP and ConvNeXt) of any host front-end; everything else in it is the
    connector (projector, resolution adapters, patch-info mining, image_newline)."""
    from transformers import CLIPVisionModel

    towers = []
    for module in front_end.modules():
        name = type(module).__name__
        if isinstance(module, CLIPVisionModel) or name in ("ConvNeXt", "ConvNextTrunk"):
            if not any(module is t or any(m is module for m in t.modules()) for t in towers):
                towers.append(module)
    return towers


def set_trainable(model, stage: str, train_vision: bool, tower_output_cached: bool = False) -> dict:
    """pretrain: the connector only; finetune: connector + LLM + routers (+ towers if asked). With the tower's
    output cached (TowerFeatures) training runs only the projector, so all before it is frozen: LLaVA-HR's
    resolution adapters and fusion too, which its own training would otherwise train."""
    for param in model.parameters():
        param.requires_grad_(stage == "finetune")
    if model.vision is not None:
        for param in model.vision.parameters():
            param.requires_grad_(True)
    towers = tower_modules(model.vision) if model.vision is not None else []
    for tower in towers:
        for param in tower.parameters():
            param.requires_grad_(train_vision and stage == "finetune")
    if tower_output_cached and model.vision is not None:
        for param in model.vision.vision_tower.parameters():
            param.requires_grad_(False)
    count = lambda params: sum(p.numel() for p in params)  # noqa: E731
    return {"trainable": count(p for p in model.parameters() if p.requires_grad),
            "frozen": count(p for p in model.parameters() if not p.requires_grad)}


def adamw(params, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW as every training here runs it: torch's fused step, one kernel of torch's own on CPU and GPU. The
    unfused step takes its square root through MKL's vector math, which rounds differently on Intel and AMD CPUs,
    so the same run trained a different model on each (suite.reproduce.CPU_ISAS); the fused one is bitwise equal."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def cosine_with_warmup(optimizer, warmup: int, total: int):
    """Linear warm-up to the peak rate, then cosine decay to zero at `total` (the LLaVA / γ-MoD / p-MoD recipe;
    transformers' get_cosine_schedule_with_warmup, without importing transformers' trainer stack)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainingForward(torch.nn.Module):
    """What one micro-step runs (and what DDP wraps): encode images, assemble, decoder, losses. The output also
    counts what each loss averages over (label tokens for the LM loss, or answers under loss_weighting 'turn';
    real tokens for the routing loss), which data-parallel training needs to weight the ranks' losses."""

    def __init__(self, vlm, loss_weighting: str = "token") -> None:
        super().__init__()
        self.vlm = vlm
        self.loss_weighting = loss_weighting

    def forward(self, batch):
        from modbench.models.routing import PAD

        features = None
        if batch.tower_features is not None:  # the frozen tower's cached output: run the front-end's projector
            features = self.vlm.vision.encode(None, stage=_TowerStage(batch.tower_features.to(self.vlm.device)))
        assembled = self.vlm.assemble(batch.samples, batch.pixels, features=features, pad_side="right")
        out = self.vlm.language_model(inputs_embeds=assembled.inputs_embeds, token_types=assembled.token_types,
                                      labels=assembled.labels, collect_stats=True, logits_at_labels=True)
        targets = assembled.labels[:, 1:]
        label_weight = (targets != -100).sum()
        if self.loss_weighting == "turn":  # logits are at the labelled positions only, in row-major order
            weights = turn_weights(targets != -100).float()
            token_loss = torch.nn.functional.cross_entropy(out.logits.float(), targets[targets != -100],
                                                           reduction="none")
            out.lm_loss = (token_loss * weights).sum() / weights.sum().clamp(min=1e-12)
            out.loss = out.lm_loss if out.routing_loss is None else out.lm_loss + out.routing_loss
            label_weight = weights.sum()  # data parallel weighs each rank by its number of answers
        out.loss_tokens = torch.stack([label_weight.double(), (assembled.token_types != PAD).sum().double()])
        return out


def turn_weights(labelled: torch.Tensor) -> torch.Tensor:
    """Per labelled position of a [batch, seq] mask, in row-major order: 1 / the length of its answer (a run of
    consecutive labelled positions), so every answer's weights sum to 1."""
    starts = labelled.clone()
    starts[:, 1:] &= ~labelled[:, :-1]
    answer = torch.cumsum(starts.flatten(), 0)[labelled.flatten()] - 1
    return 1.0 / torch.bincount(answer).double()[answer]


class _TowerStage:
    """A front-end's `stage` hook (models.llava.run_stage) that hands back cached tower output for its
    vision_encoder part and runs the rest; a front-end without that one part cannot use cached features."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def __call__(self, component: str, fn):
        if component == "vision_encoder":
            return self.features
        if component == "projector":
            return fn()
        raise ValueError(f"tower_features: this front-end's encode has a {component!r} part besides one vision "
                         "encoder and its projector; train it from images")


def data_parallel_loss(accelerator, out):
    """The loss whose gradient, averaged over the ranks (DDP's all-reduce), is the gradient of one process's loss
    on the whole global batch: each loss is a mean (LM: over label tokens, or answers; routing: real tokens), and the
    ranks hold different numbers of them, so each rank's mean is weighted by its share of the global count.
    Returns (loss to backpropagate, the global LM loss, the global routing loss) for the log."""
    world = accelerator.num_processes
    routing = out.routing_loss if out.routing_loss is not None else out.lm_loss.new_zeros(())
    local = torch.cat([out.loss_tokens, torch.stack([out.lm_loss.detach(), routing.detach()]).double()
                       * out.loss_tokens])
    total = accelerator.reduce(local.to(accelerator.device), reduction="sum")
    share = (out.loss_tokens.to(total.device) * world / total[:2].clamp(min=1)).to(out.lm_loss.dtype)
    loss = out.lm_loss * share[0]
    if out.routing_loss is not None:
        loss = loss + out.routing_loss * share[1]
    lm, rl = (total[2:] / total[:2].clamp(min=1)).tolist()
    return loss, lm, (rl if out.routing_loss is not None else None)


def release_kind(model) -> str:
    """The released checkpoint layout this model is written in (its host family's release of its scheme)."""
    from modbench.models.checkpoints import release_layout

    return release_layout(model.cfg)


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint_dir(output: Path) -> Path:
    return output / "checkpoints"


def latest_checkpoint(output: Path) -> Path | None:
    pointer = _checkpoint_dir(output) / "latest"
    if not pointer.exists():
        return None
    path = _checkpoint_dir(output) / pointer.read_text().strip()
    return path if (path / "trainer_state.json").exists() else None


def save_checkpoint(accelerator, output: Path, state: dict, keep: int) -> Path:
    """accelerate's state (model, optimizer, scheduler, RNG) + our trainer state, into a temporary folder that
    is renamed into place; then the `latest` pointer moves (atomically); older checkpoints are pruned."""
    from modbench.suite.results import write_json_atomic, write_text_atomic

    root = _checkpoint_dir(output)
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".{final.name}.tmp"  # one name for every rank: each writes its own RNG state into it
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # save_state returns on each rank once its own files are written: without this barrier the main process
    # could rename the folder while another rank still writes its RNG state (seen under load: that file missing)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "trainer_state.json", state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text_atomic(root / "latest", final.name + "\n")
        done = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) a training run; returns the train.json record (on the main process)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from tqdm import tqdm

    from modbench.models.checkpoints import save_authors_checkpoint
    from modbench.suite.results import results_record, write_json_atomic
    from modbench.suite.train_data import (
        Collate,
        EpochBatches,
        InstructionDataset,
        TowerFeatures,
        modality_lengths,
    )

    cfg.validate()
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    resume_from = latest_checkpoint(output)
    if resume_from is not None and not cfg.resume:
        raise FileExistsError(f"{output} holds checkpoints of an earlier run: pass --resume to continue it, or "
                              "choose another --output")
    saved = json.loads((resume_from / "trainer_state.json").read_text()) if resume_from and cfg.resume else None
    if saved and saved["config"] != _comparable(cfg):
        raise ValueError(f"--resume: {resume_from} was written by another configuration: "
                         f"{_diff(saved['config'], _comparable(cfg))}")
    # accelerate keeps one state per process; the reproduction runs several trainings in one process, each
    # with its own settings, so the per-run parts are cleared first (the process group, if any, is kept).
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, cpu=cfg.device == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    main = accelerator.is_main_process
    set_seed(cfg.seed)

    model = load_base_model(cfg)
    vision = model.cfg.vision
    tower_features = None
    if cfg.tower_features:
        from modbench.models.config import ConfigError

        if not getattr(model.vision, "tower_output_cacheable", False):
            raise ConfigError(f"train config: tower_features: {model.cfg.name}'s front-end is not one tower and a "
                              "projector (LLaVA-1.5's and LLaVA-HR's are); train it from images")
        tower_features = TowerFeatures(cfg.tower_features)
        tower_features.check(model.vision.vision_tower, model.cfg.num_image_tokens, vision.hidden_size)
    dataset = InstructionDataset(cfg.data, cfg.images or None, model.tokenizer,
                                 model.cfg.num_image_tokens, model.cfg.llm.max_position_embeddings,
                                 tower_features)
    model, choice = choose_scheme(model, cfg, dataset, layers=saved["mod_choice"]["layers"] if saved else None,
                                  log=log if main else _quiet)
    if saved:
        choice = saved["mod_choice"]
    model.language_model.model.gradient_checkpointing = cfg.gradient_checkpointing
    params = set_trainable(model, cfg.stage, cfg.train_vision, tower_output_cached=tower_features is not None)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)

    world = accelerator.num_processes
    global_batch = cfg.batch_size * world
    lengths = modality_lengths(dataset.records) if cfg.group_by_modality_length else None
    batches_per_epoch = len(dataset) // global_batch
    if batches_per_epoch == 0:
        raise ValueError(f"{cfg.data}: {len(dataset)} samples make no global batch of {global_batch}")
    total_steps = cfg.steps or max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))
    scheduler = cosine_with_warmup(optimizer, int(round(cfg.warmup_ratio * total_steps)), total_steps)
    # The scheduler is stepped by us once per optimizer step (accelerate's wrapper would step it once per
    # process), and checkpointed with the rest of the state.
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:  # DeepSpeed reads the micro-batch from a prepared loader; ours is not prepared
        deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    forward, optimizer = accelerator.prepare(TrainingForward(model, cfg.loss_weighting), optimizer)
    accelerator.register_for_checkpointing(scheduler)

    state = {"step": 0, "micro_step": 0, "epoch": 0, "batch_in_epoch": 0, "tokens_seen": 0, "samples_seen": 0,
             "bad_samples": 0, "bad_examples": [], "wall_seconds": 0.0, "step_seconds": [],
             "config": _comparable(cfg), "mod_choice": choice}
    if saved:
        accelerator.load_state(str(resume_from))
        state.update(saved)
        log(f"resumed from {resume_from} at step {state['step']}")
    log_path = output / "train_log.jsonl"
    if main and not saved:
        log_path.unlink(missing_ok=True)
    collate = Collate(model.vision.preprocess if model.vision is not None else None, cfg.skip_bad_samples)
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {model.cfg.mod.scheme}", unit="step",
               disable=not (cfg.progress and main), dynamic_ncols=True)
    window = _Window()
    started = time.perf_counter() - state["wall_seconds"]
    step_start = time.perf_counter()
    while state["step"] < total_steps:
        sampler = EpochBatches(len(dataset), global_batch, cfg.seed, state["epoch"], state["batch_in_epoch"],
                               rank=accelerator.process_index, world=world, lengths=lengths)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=cfg.num_workers)
        for batch in loader:
            state["batch_in_epoch"] += 1
            state["bad_samples"] += len(batch.bad)
            state["bad_examples"] = (state["bad_examples"] + [str(b) for b in batch.bad])[:20]
            with accelerator.accumulate(forward):
                out = forward(batch) if len(batch) else None
                if out is not None and world > 1:
                    loss, out.global_lm, out.global_routing = data_parallel_loss(accelerator, out)
                    accelerator.backward(loss)
                elif out is not None:
                    accelerator.backward(out.loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state["micro_step"] += 1
            if out is not None:
                tokens = int(out.total[:, 0, 1:].sum())  # real tokens (every layer sees each once)
                state["tokens_seen"] += tokens
                state["samples_seen"] += len(batch)
                window.add(out, tokens)
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            seconds = time.perf_counter() - step_start
            step_start = time.perf_counter()
            state["step_seconds"].append(seconds)
            state["wall_seconds"] = time.perf_counter() - started
            window.steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{window.last_lm:.3f}", rloss=f"{window.last_routing:.4f}",
                            tok_s=f"{window.tokens / max(time.perf_counter() - window.started, 1e-9):.0f}",
                            refresh=False)
            if main and (state["step"] % cfg.log_every == 0 or state["step"] == total_steps):
                _append_jsonl(log_path, window.record(state, scheduler.get_last_lr()[0], accelerator.device))
            if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < total_steps:
                save_checkpoint(accelerator, output, state, cfg.keep_checkpoints)
            if state["step"] >= total_steps:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    bar.close()
    state["wall_seconds"] = time.perf_counter() - started
    totals = accelerator.reduce(torch.tensor([state["tokens_seen"], state["samples_seen"], state["bad_samples"]],
                                             device=accelerator.device), reduction="sum").tolist()
    save_checkpoint(accelerator, output, state, cfg.keep_checkpoints)
    trained = accelerator.unwrap_model(forward).vlm.eval()
    if deepspeed is not None and deepspeed.zero_stage == 3:  # the weights are partitioned across the ranks
        trained = _gathered_zero3_model(accelerator, forward, cfg, choice, main) or trained
    record = None
    if main:
        save_authors_checkpoint(trained, output, release_kind(trained), fmt="safetensors")
        record = results_record(
            "train", asdict(cfg), status="ok", model=trained.cfg.name, scheme=trained.cfg.mod.scheme,
            mod_layers=list(trained.language_model.model.routing.mod_layers), mod_choice=choice,
            parameters=params, steps=state["step"], micro_steps=state["micro_step"], processes=world,
            global_batch=global_batch * cfg.grad_accum, tokens_seen=int(totals[0]), samples_seen=int(totals[1]),
            bad_samples=int(totals[2]), bad_examples=state["bad_examples"], wall_seconds=state["wall_seconds"],
            median_step_seconds=statistics.median(state["step_seconds"]) if state["step_seconds"] else None,
            final={"lm_loss": window.last_lm, "routing_loss": window.last_routing},
            release_layout=release_kind(trained),
            files={"model": ".", "log": "train_log.jsonl", "checkpoints": "checkpoints/"})
        write_json_atomic(output / "train.json", record)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return record


def _quiet(*_args, **_kwargs) -> None:
    pass


def _gathered_zero3_model(accelerator, forward, cfg: TrainConfig, choice: dict, main: bool):
    """ZeRO-3 holds a shard of each weight per rank: gather them (every rank takes part; the accelerate config
    must set zero3_save_16bit_model / stage3_gather_16bit_weights_on_model_save) into a model built afresh on
    the main process, which writes the release. Returns that model on the main process, else None."""
    state = accelerator.get_state_dict(forward)
    if not main:
        return None
    model, _ = choose_scheme(load_base_model(cfg), cfg, layers=choice["layers"], log=_quiet)
    model.load_state_dict({k.removeprefix("vlm."): v for k, v in state.items()}, strict=True)
    return model.eval()


def _comparable(cfg: TrainConfig) -> dict:
    """The config fields that decide the weights (a resumed run must match them)."""
    data = asdict(cfg)
    for key in ("resume", "progress", "num_workers", "save_every", "keep_checkpoints", "log_every", "device"):
        data.pop(key)
    if not data["group_by_modality_length"]:  # added later: at its default it stays out, so older runs resume
        del data["group_by_modality_length"]
    if data["loss_weighting"] == "token":  # likewise
        del data["loss_weighting"]
    return data


def _diff(a: dict, b: dict) -> str:
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


class _Window:
    """Losses, tokens and routing shares accumulated between two log lines."""

    def __init__(self) -> None:
        self.last_lm = self.last_routing = float("nan")
        self.reset()

    def reset(self) -> None:
        self.lm, self.routing, self.steps, self.tokens = [], [], 0, 0
        self.kept = self.total = None
        self.started = time.perf_counter()

    def add(self, out, tokens: int) -> None:
        if hasattr(out, "global_lm"):  # data parallel: the whole global batch's losses, as one process logs them
            self.last_lm = out.global_lm
            self.last_routing = out.global_routing or 0.0
        else:
            self.last_lm = float(out.lm_loss.detach())
            self.last_routing = float(out.routing_loss.detach()) if out.routing_loss is not None else 0.0
        self.lm.append(self.last_lm)
        self.routing.append(self.last_routing)
        kept, total = out.kept.detach().sum(dim=0).double(), out.total.detach().sum(dim=0).double()
        self.kept = kept if self.kept is None else self.kept + kept
        self.total = total if self.total is None else self.total + total
        self.tokens += tokens

    def record(self, state: dict, lr: float, device) -> dict:
        from modbench.models.routing import TOKEN_TYPE_NAMES
        from modbench.suite.results import peak_memory_bytes

        seconds = time.perf_counter() - self.started
        row = {"step": state["step"], "epoch": state["epoch"], "lr": lr,
               "lm_loss": statistics.fmean(self.lm) if self.lm else None,
               "routing_loss": statistics.fmean(self.routing) if self.routing else None,
               "step_seconds": seconds / max(self.steps, 1), "tokens_per_s": self.tokens / max(seconds, 1e-9),
               "peak_memory": peak_memory_bytes(torch.device(device)), "tokens_seen": state["tokens_seen"],
               "bad_samples": state["bad_samples"]}
        if self.total is not None:
            share = (self.kept / self.total.clamp(min=1)).tolist()  # [layers, types]
            row["kept_share"] = {name: [round(layer[t], 4) for layer in share]
                                 for t, name in enumerate(TOKEN_TYPE_NAMES) if t and float(self.total[:, t].sum()) > 0}
        self.reset()
        return row
