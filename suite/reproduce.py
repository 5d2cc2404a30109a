"""`modbench reproduce`: the papers' claims tested at CPU scale, with verdicts computed from measured numbers.

The pipeline, per seed (every stage cached under a content hash of its inputs, so an interrupted run continues
where it stopped and a rerun with the same spec redoes nothing):
1. corpus     drawn scenes (tasks/scenes.py): training JSON in LLaVA's format, held-out sets in benchmark schemas;
2. vision     (presets with vision_steps) the tower pretrained on the training scenes, each image token
              predicting what covers its cell (suite/vision_pretrain.py): the stand-in for CLIP's pretraining. It
              then stays frozen, as LLaVA keeps CLIP frozen; without this stage it learns from scratch with the LLM;
3. dense      a LLaVA-1.5-shaped model (cpu-repro-llava; quick-hr: the LLaVA-HR-shaped cpu-repro-llava-hr, its
              tower CLIP + ConvNeXt at 320 px): its LLM and connector trained from scratch, one stage
              (at this scale there is no pretrained Vicuna to align, so LLaVA's stage 1 has nothing to do);
4. arank      ARank of the dense model over ScienceQA-style prompts (as the paper) -> the γ-MoD layers;
5. finetune   from the dense checkpoint, the same steps and data for every row: a dense continuation (the fair
              baseline), γ-MoD (ARank layers, shared router, masked routing learning) at routing ratios, the
              ablations of γ-MoD Table 1, p-MoD with progressive ratio decay and with a constant ratio;
6. evaluate   each checkpoint through lmms-eval on the held-out sets, γ-MoD both with the released inference
              rule (keep p > 0.005) and at a controlled skip ratio (the training one);
7. speed      training step time and inference samples/s of the main models, side by side in one process.
Then the tables (Markdown and CSV) beside the papers' values and a verdict per claim, and one plot.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from modbench.models.variants import T1, T3, T4, T6, PaperRow, pmod_rows, rows

CODE_VERSION = 7  # bump when a stage's meaning changes, so cached stages are redone
MODEL = "cpu-repro-llava"
TASKS = ("pope_local", "gqa_local", "scienceqa_img_local", "textvqa_val_local", "mme_local", "mmbench_en_dev_local")


def _column(benchmark: str, choice: str, scale: float | None = None) -> tuple[str, tuple[str, str, float]]:
    """A benchmark's registered metric choice (tasks/benchmarks.py) under its display name: (task, metric, scale
    to percent), the registration's scale unless `scale` is given."""
    from modbench.tasks.benchmarks import get_benchmark, metric

    chosen = metric(benchmark, choice)
    return get_benchmark(benchmark).display, (chosen.task, chosen.name, chosen.scale if scale is None else scale)


# column -> (task, metric, scale to percent), in the report's order; where the choice is not the papers' metric:
BENCHMARKS = dict([
    _column("gqa", "accuracy"),
    _column("scienceqa_img", "accuracy"),
    # TextVQA without OCR tokens in the prompt: the drawn signs come with none (tasks/scenes.py writes ocr_tokens
    # []), so the papers' OCR prompt would only add an empty "Reference OCR token:" line; the word is read off the
    # image.
    _column("textvqa", "no_ocr"),
    # POPE: accuracy over the three splits. The papers report F1, which is degenerate for a model that answers
    # one way (0 for always-no, ~67 for always-yes) — what a small model near chance on yes/no does.
    _column("pope", "accuracy"),
    _column("mme", "perception", 100.0 / 800),  # as % of its maximum: 4 perception categories, 800 at most
    _column("mmbench", "circular"),
])


@dataclass(frozen=True)
class Row:
    """One fine-tuned model: its training overrides beside the dense continuation, how it is evaluated, and the
    papers' rows it is the CPU-scale counterpart of (`modbench table` shows it there)."""

    scheme: str  # dense | gamma | pmod
    skip: float = 0.5  # γ-MoD: training skip fraction (the routing ratio)
    layers: str = "arank"  # γ-MoD: arank | all | 1of2 | 2of3
    masked: str = "qa"
    router: str = "shared"
    constant_ratio: bool = False  # p-MoD: a constant kept ratio with PRD's mean instead of PRD
    paper: tuple[PaperRow, ...] = ()

    def train_overrides(self) -> dict:
        if self.scheme == "dense":
            return {}
        if self.scheme == "pmod":
            return {"scheme": "pmod"}
        out = {"scheme": "gamma", "skip_fraction": self.skip, "masked": self.masked, "router": self.router}
        if self.layers != "arank":
            out["mod_pattern"] = self.layers
        return out


def _t1(section: str, setting: str) -> tuple[PaperRow, ...]:
    return rows(T1, (section, setting))


# Trained from the LLaVA-1.5-shaped model (cpu-repro-llava): LLaVA's rows in Tables 3 and 6, and Tables 1 and 4,
# which are LLaVA-HR's ablations and efficiency
ROWS: dict[str, Row] = {
    "dense": Row("dense", paper=_t1("baseline", "LLaVA-HR dense") + rows(T3, ("LLaVA", "dense", "7B"))
                 + rows(T4, ("LLaVA-HR-7B dense",)) + rows(T6, ("dense", "LLaVA-1.5", "7B")) + pmod_rows("LLaVA-v1.5")),
    "gamma-0.5": Row("gamma", 0.5, paper=_t1("shared_router", "shared") + _t1("routing_ratio", "51%")
                     + rows(T3, ("LLaVA", "gamma-mod-0.5", "7B")) + rows(T4, ("gamma-mod-0.5",))),
    "gamma-0.34": Row("gamma", 0.34, paper=_t1("mod_layer", "ARank-based deployment") + _t1("masked_token", "Q+A")
                      + _t1("routing_ratio", "34%") + rows(T3, ("LLaVA", "gamma-mod-0.3", "7B"))
                      + rows(T4, ("gamma-mod-0.3",)) + rows(T6, ("sparse", "gamma-mod-LLaVA", "7B"))),
    "gamma-0.17": Row("gamma", 0.17, paper=_t1("routing_ratio", "17%")),
    "gamma-0.68": Row("gamma", 0.68, paper=_t1("routing_ratio", "68%")),
    "gamma-all": Row("gamma", 0.34, layers="all", paper=_t1("mod_layer", "all layers")),
    "gamma-1of2": Row("gamma", 0.34, layers="1of2", paper=_t1("mod_layer", "1 MoD per 2 layers")),
    "gamma-2of3": Row("gamma", 0.34, layers="2of3", paper=_t1("mod_layer", "2 MoDs per 3 layers")),
    "gamma-mask-none": Row("gamma", 0.34, masked="none", paper=_t1("masked_token", "none")),
    "gamma-mask-q": Row("gamma", 0.34, masked="q", paper=_t1("masked_token", "Q")),
    "gamma-per-layer": Row("gamma", 0.5, router="per-layer", paper=_t1("shared_router", "not shared")),
    "pmod-prd": Row("pmod", paper=pmod_rows("p-MoD-LLaVA-v1.5")),
    "pmod-constant": Row("pmod", constant_ratio=True),
}


@dataclass(frozen=True)
class Preset:
    name: str
    seeds: int
    rows: tuple[str, ...]
    image_size: int = 80
    train_scenes: int = 6000
    turns: int = 8  # question-answer turns per training image (none asked twice), then a caption
    exists_weight: int = 1  # shares of existence questions among those turns (tasks.scenes.training_turns)
    caption: bool = True  # the turns end with a dense caption of the scene
    yes_no_order: str = "drawn"  # where the yes/no turns go (tasks.scenes.training_turns)
    exists_pairs: bool = False  # existence asked in Yes/No pairs about one image (tasks.scenes.training_turns)
    choice_weight: int = 1  # shares of multiple-choice questions among those turns (tasks.scenes.training_turns)
    option_lookup: float = 0.0  # share of conversations with one more, text-only letter drill (the same)
    eval_per_task: int = 60
    dense_steps: int = 750
    # > 0: the tower is first pretrained on the training scenes (suite/vision_pretrain.py, the stand-in for CLIP)
    # and stays frozen in dense training and fine-tuning, as in LLaVA; 0: it learns from scratch with the LLM
    # (the dense sweep's setting: results/reproduction/dense_sweep.md)
    vision_steps: int = 600
    vision_factored: float = 0.0  # > 0: the tower also names colour and shape apart (VisionPretrainConfig.factored)
    finetune_steps: int = 80
    batch_size: int = 16
    dense_lr: float = 2e-3
    finetune_lr: float = 5e-4
    loss_weighting: str = "token"  # dense training and fine-tunes (TrainConfig.loss_weighting)
    arank_keep: int = 1  # of layers 1..L-2 the highest-ARank ones stay dense (and 0, L-1)
    arank_samples: int = 16
    eval_batch: int = 8
    speed_batches: int = 6  # training steps timed per model (interleaved), after one warm-up
    latency_samples: int = 24
    model: str = MODEL
    # a cap on the evaluations' new tokens (None: each benchmark's own, e.g. MMBench's 1024 as in the authors'
    # script): micro's barely trained models never stop early, and would run every question to the cap; quick's
    # γ-MoD under the released rule answers some MMBench questions with its letter and then a caption that runs
    # to 1,024 tokens (QUICK_MAX_NEW_TOKENS)
    max_new_tokens: int | None = None

    def train_overrides(self) -> dict:
        """TrainConfig fields every training of the preset sets; at their defaults they stay out, so the stage
        keys of the runs before them are kept."""
        return {} if self.loss_weighting == "token" else {"loss_weighting": self.loss_weighting}

    @property
    def train_tower(self) -> bool:
        """Whether training steps update the vision tower: only when no pretraining stage made it."""
        return not self.vision_steps


QUICK_ROWS = ("dense", "gamma-0.5", "pmod-prd")
# lmms-eval's own MMBench cap. Every held-out answer is a few tokens, greedy decoding makes the first 32 tokens
# the same either way, and at 32 the quick run's accuracies were those at the benchmarks' caps (measured at
# ca9c3e2: every metric equal, γ-MoD's released-rule evaluation 49 -> 6 s); what moves is the KV share under the
# released rule, which counted the run-on caption's decoded tokens.
QUICK_MAX_NEW_TOKENS = 32
PRESETS = {
    "micro": Preset("micro", seeds=1, rows=QUICK_ROWS, image_size=32, train_scenes=48, turns=2, eval_per_task=4,
                    vision_steps=3, dense_steps=4, finetune_steps=2, batch_size=8, arank_samples=4, speed_batches=1,
                    latency_samples=2, model="cpu-repro-llava-micro", max_new_tokens=8),
    # quick: an 800-step tower that also names colour and shape apart (at a quarter of the pairs' loss weight),
    # and a dense learning rate of 4e-3. With the pairs' tower alone its 750 dense steps ended before the
    # abrupt transition to "is there a <colour> <shape>?" on most seeds (a draw of float rounding: ISA, thread
    # count); the factored tower moves it earlier, and at weight 0.25 without the loss of reading that weight 1
    # cost (results/reproduction/dense_sweep.md). Full's 1,800 dense steps learnt existence with the pairs'
    # tower at 2e-3 in every seed, and full fits 90 min with its seeds in parallel. The model's LM head is tied
    # to its embedding (cpu-repro-llava-tied): untied, the quick budget never learnt to pick an option's letter
    # well enough for MMBench's circular score; tied, it did (the dense sweep's last section).
    "quick": Preset("quick", seeds=1, rows=QUICK_ROWS, vision_steps=800, vision_factored=0.25, dense_lr=4e-3,
                    max_new_tokens=QUICK_MAX_NEW_TOKENS, model="cpu-repro-llava-tied"),
    "full": Preset("full", seeds=3, rows=tuple(ROWS), dense_steps=1800),
    # quick's rows, steps, tower recipe and answer cap on the LLaVA-HR-shaped model (γ-MoD's main host): the
    # scenes drawn at 320 px for its ConvNeXt, the same 100 image tokens for the LLM; 2 seeds, 17-18 min each on
    # the newer 2-core AMD EPYC. With the pairs' tower alone (vision_factored 0, its runs before 2026-12-05) its dense stage learnt
    # existence on one seed of two, and on neither of the first two seeds under fused AdamW and the AVX2 pin.
    "quick-hr": Preset("quick-hr", seeds=2, rows=QUICK_ROWS, vision_steps=800, vision_factored=0.25, dense_lr=4e-3,
                       image_size=320, model="cpu-repro-llava-hr", max_new_tokens=QUICK_MAX_NEW_TOKENS),
}


def stage_key(name: str, inputs: dict) -> str:
    digest = hashlib.sha1(json.dumps({"v": CODE_VERSION, **inputs}, sort_keys=True, default=str).encode())
    return f"{name}-{digest.hexdigest()[:12]}"


# Training at this scale is chaotic: the last bit of a float grows over hundreds of steps into a different model
# (measured: the quick preset's dense MME 40.8 on one machine, 55.5 on another, same code and packages). So the
# reproduction pins the code paths that round: torch's own kernels to AVX2 (ATEN_CPU_CAPABILITY), which every
# x86-64 machine of the last decade runs, oneDNN's likewise (ONEDNN_MAX_CPU_ISA) and MKL's GEMMs to its AVX2 mode
# (MKL_CBWR=AVX2). MKL honours that mode on Intel CPUs only; on AMD ones it picks a path of its own (MKL_VERBOSE
# shows CNR:AUTO), so 'avx2' agrees among Intel machines and, as far as measured, among machines of one AMD kind,
# not between the two. 'portable' pins MKL to its vendor-neutral path (MKL_CBWR=COMPATIBLE): measured on an
# Intel Xeon and an AMD EPYC with torch 2.11, every GEMM, convolution, attention and activation kernel the
# models use, forward and backward, was bitwise equal under it (under 'avx2' the GEMMs were not), and so were
# the weights after 30 steps of a small LLaVA-like model (not under 'avx2'), at about twice the time of a
# training step on the EPYC. Either way the optimizer is torch's fused AdamW (suite.train.adamw):
# the unfused step's sqrt is MKL's vector math, which differed between the two under both pins.
# The variables are read when torch first computes, so they are set before that. 'native' leaves each machine
# its own kernels.
CPU_ISAS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
            "portable": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"},
            "native": {}}


def pin_cpu_isa(isa: str) -> str:
    """Pin this process's CPU code paths (CPU_ISAS); returns torch's capability in effect, which joins the stage
    keys. An error when the pin cannot hold: torch already computed before it, or the CPU lacks the ISA."""
    import os

    if isa not in CPU_ISAS:
        raise ValueError(f"--cpu-isa must be one of {sorted(CPU_ISAS)}, got {isa!r}")
    before = {name: os.environ.get(name) for name in CPU_ISAS[isa]}
    os.environ.update(CPU_ISAS[isa])
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    wanted = CPU_ISAS[isa].get("ATEN_CPU_CAPABILITY", "").upper()
    if wanted and capability != wanted:
        for name, value in before.items():  # a pin that did not hold is not left behind
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
        raise RuntimeError(
            f"--cpu-isa {isa}: torch runs its {capability} kernels, not {wanted}: either torch computed in this "
            "process before the pin (run `modbench reproduce` in a fresh process) or this CPU lacks the ISA "
            "(--cpu-isa native uses the machine's own kernels; its numbers then differ from the committed ones)")
    return capability


def pinned_code_paths(isa: str, threads: int | None = None) -> str:
    """Pin the CPU code paths (pin_cpu_isa), then set torch's thread count if given, and name what computes the
    stages: ISA, capability, thread count. The thread count changes the rounding too (the same dense stage on 1
    and on 2 threads: POPE 82.8 vs 48.9), so it joins the stage keys as well: a cache is reused only by a process
    computing the same numbers."""
    capability = pin_cpu_isa(isa)
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return f"{isa}/{capability}/{torch.get_num_threads()}t"


# the packages whose code computes a stage's numbers (models, training, drawing, evaluation)
STAGE_PACKAGES = ("torch", "transformers", "lmms_eval", "numpy", "pillow", "accelerate")


def package_versions() -> dict:
    """Their installed versions (None: not installed): part of every stage key, so an upgrade recomputes instead
    of mixing caches."""
    from modbench.suite.results import _version

    return {name: _version(name) for name in STAGE_PACKAGES}


class Pipeline:
    """Stages as cached folders under output/stages; `done.json` is written last, so a folder without it is
    redone (a training stage resumes from its last checkpoint)."""

    def __init__(self, preset: Preset, output: str | Path, log=print, cpu: str = "") -> None:
        self.preset = preset
        self.cpu = cpu  # the CPU code paths (pin_cpu_isa): part of every stage key, so no cache mixes them
        self.packages = package_versions()  # likewise (read once: they do not change within a run)
        # absolute: stage records name their files by path, and a cache must read the same from any directory
        self.output = Path(output).resolve()
        self.stages = self.output / "stages"
        self.log = log
        self.ran: list[str] = []  # stages computed by this invocation (the rest came from the cache)
        self.used: dict[int, list[str]] = {}  # seed -> the stage folders its results come from
        self._seed = 0

    # -- caching -------------------------------------------------------------------------------------------
    def _stage(self, name: str, inputs: dict, build) -> tuple[Path, dict]:
        # the CPU code paths and the packages that compute: a cache is reused only by what computes the same
        key = stage_key(name, inputs | ({"cpu": self.cpu, "packages": self.packages} if self.cpu else {}))
        folder = self.stages / key
        self.used.setdefault(self._seed, []).append(key)
        done = folder / "done.json"
        if done.exists():
            return folder, json.loads(done.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"[{key}] {name}")
        started = time.perf_counter()
        result = build(folder)
        from modbench.suite.results import write_json_atomic

        write_json_atomic(done, {"stage": name, "inputs": inputs, "cpu": self.cpu,  # the code paths it ran on
                                 "packages": self.packages,
                                 "seconds": time.perf_counter() - started, **result})
        self.ran.append(key)
        return folder, json.loads(done.read_text())

    # -- stages --------------------------------------------------------------------------------------------
    def corpus(self, seed: int) -> tuple[Path, dict]:
        from modbench.tasks.scenes import CorpusSpec, write_corpus

        p = self.preset
        spec = CorpusSpec(seed=seed, image_size=p.image_size, train_scenes=p.train_scenes, turns=p.turns,
                          exists_weight=p.exists_weight, caption=p.caption, yes_no_order=p.yes_no_order,
                          exists_pairs=p.exists_pairs, choice_weight=p.choice_weight,
                          option_lookup=p.option_lookup, eval_per_task=p.eval_per_task)
        key = asdict(spec)
        # fields added later: at their defaults (CorpusSpec's) they stay out of the key, so earlier caches stay valid
        later = ("caption", "yes_no_order", "exists_pairs", "choice_weight", "option_lookup")
        for spec_field in fields(CorpusSpec):
            if spec_field.name in later and key[spec_field.name] == spec_field.default:
                del key[spec_field.name]
        return self._stage("corpus", key, lambda folder: {"manifest": write_corpus(folder, spec)})

    def _train(self, name: str, inputs: dict, cfg_fields: dict) -> tuple[Path, dict]:
        from modbench.suite.train import TrainConfig, train

        def build(folder: Path) -> dict:
            cfg = TrainConfig(**cfg_fields, output=str(folder / "model"), resume=True, progress=True,
                              save_every=max(10, cfg_fields["steps"] // 4), device="cpu")
            record = train(cfg, log=self.log)
            return {"model": str(folder / "model"), "train": {k: record[k] for k in (
                "mod_layers", "mod_choice", "steps", "wall_seconds", "median_step_seconds", "tokens_seen",
                "samples_seen", "final")}}

        return self._stage(name, inputs, build)

    def vision(self, seed: int, corpus: tuple[Path, dict]) -> tuple[Path, dict] | None:
        """The tower pretrained on the corpus's training scenes (None when the preset trains it from scratch)."""
        p = self.preset
        if not p.vision_steps:
            return None
        from modbench.suite.vision_pretrain import VisionPretrainConfig, pretrain_vision
        from modbench.tasks.scenes import CorpusSpec, training_scenes

        spec = CorpusSpec(**corpus[1]["manifest"]["spec"])

        def build(folder: Path) -> dict:
            cfg = VisionPretrainConfig(model=p.model, images=str(corpus[0] / "train" / "images"),
                                       output=str(folder / "model"), steps=p.vision_steps, seed=seed,
                                       factored=p.vision_factored)
            record = pretrain_vision(cfg, training_scenes(spec)[0], spec.image_size, log=self.log)
            return {"model": cfg.output, "tower_features": str(Path(cfg.output) / record["files"]["tower_features"]),
                    "vision": {k: record[k] for k in (
                "steps", "wall_seconds", "final_loss", "held_out_patch_accuracy", "probe_scenes")}}

        # keyed by what draws the images, not by the whole corpus: corpora that differ only in their questions
        # share one tower
        images = {"seed": spec.seed, "image_size": spec.image_size, "train_scenes": spec.train_scenes}
        key = {"images": images, "model": p.model, "steps": p.vision_steps, "seed": seed}
        if p.vision_factored:  # in the key only when set: towers pretrained before the option keep their key
            key["factored"] = p.vision_factored
        return self._stage("vision", key, build)

    def dense(self, seed: int, corpus: tuple[Path, dict], vision: tuple[Path, dict] | None = None
              ) -> tuple[Path, dict]:
        p = self.preset
        folder, _ = corpus
        fields = dict(model=vision[1]["model"] if vision else p.model, data=str(folder / "train" / "scenes.json"),
                      steps=p.dense_steps, batch_size=p.batch_size, lr=p.dense_lr, train_vision=vision is None,
                      seed=seed, **p.train_overrides())
        inputs = {"corpus": folder.name, **fields, "data": None}
        if vision:
            fields["tower_features"] = vision[1]["tower_features"]  # the frozen tower's output, computed once
            inputs |= {"model": None, "vision": vision[0].name, "tower_features": True}
        return self._train("dense", inputs, fields)

    def arank(self, seed: int, corpus, dense) -> tuple[Path, dict]:
        p = self.preset

        def build(folder: Path) -> dict:
            from modbench import models
            from modbench.models.arank import compute_arank, select_mod_layers

            model = models.load(dense[1]["model"])
            samples = arank_samples(corpus[0], p.arank_samples)
            result = compute_arank(model, samples, num_dense=p.arank_keep)
            layers = select_mod_layers(result.per_layer, p.arank_keep, always_dense=(0, model.cfg.llm.num_layers - 1))
            self.log(f"ARank {[round(v, 2) for v in result.per_layer]} -> MoD layers {layers}")
            return {"per_layer": result.per_layer, "mod_layers": layers, "samples": len(samples)}

        return self._stage("arank", {"dense": dense[0].name, "keep": p.arank_keep, "samples": p.arank_samples,
                                     "seed": seed}, build)

    def finetune(self, seed: int, row_name: str, corpus, dense, arank, vision=None) -> tuple[Path, dict]:
        from modbench import models

        p = self.preset
        row = ROWS[row_name]
        fields = dict(model=dense[1]["model"], data=str(corpus[0] / "train" / "scenes.json"),
                      steps=p.finetune_steps, batch_size=p.batch_size, lr=p.finetune_lr,
                      train_vision=p.train_tower,
                      seed=seed, **row.train_overrides(), **p.train_overrides())
        if row.scheme == "gamma" and row.layers == "arank":
            fields["mod_layers"] = ",".join(map(str, arank[1]["mod_layers"]))
        if row.scheme == "pmod" and row.constant_ratio:
            from modbench.models.config import ModSpec
            from modbench.models.pmod import pmod_layers_and_ratios

            num_layers = models.get_variant(p.model).llm.num_layers
            layers, ratios = pmod_layers_and_ratios(ModSpec(scheme="pmod"), num_layers)
            fields["mod_layers"] = ",".join(map(str, layers))
            fields["ratios"] = f"{statistics.fmean(ratios):.6f}"
        if vision and not p.train_tower:
            fields["tower_features"] = vision[1]["tower_features"]
        inputs = {"row": row_name, "dense": dense[0].name, "arank": arank[0].name, **fields, "model": None,
                  "data": None}
        if "tower_features" in fields:  # keyed by the tower (the dense stage's key names it), not the file's path
            inputs["tower_features"] = True
        if models.get_variant(p.model).llm.tie_word_embeddings:
            # convert_to_mod once cloned a tied head apart from the embedding, so the MoD rows trained a head of
            # their own, which the writer dropped: fine-tunes cached then are not reused
            inputs["head"] = "tied"
        return self._train(f"finetune-{row_name}", inputs, fields)

    def evaluate(self, seed: int, row_name: str, corpus, model_stage, fixed_skip: float | None,
                 swapped: bool = False) -> tuple[Path, dict]:
        """One checkpoint through lmms-eval on the held-out sets; `swapped`: on their copy where every question
        shows another scene's image (the control: how much of a score needs the right image)."""
        from modbench.suite.runner import RunSpec, run

        p = self.preset

        def build(folder: Path) -> dict:
            data_root = corpus[0] / "eval"
            if swapped:
                from modbench.tasks.scenes import write_swapped_copy

                data_root = write_swapped_copy(data_root, folder / "swapped_eval")
            spec = RunSpec(model=model_stage[1]["model"], tasks=list(TASKS), protocol="llava", batch_size=p.eval_batch,
                           output=str(folder), run_id="run", data_root=str(data_root), fixed_skip=fixed_skip,
                           seed=seed, max_new_tokens=p.max_new_tokens)
            outcome = run(spec, progress=False)
            if outcome.status != "ok":
                raise RuntimeError(f"evaluation of {row_name} failed: {outcome.errors[:1]}")
            return {"run": str(folder / "run" / "run.json")}

        mode = "swapped" if swapped else "released" if fixed_skip is None else f"fixed{fixed_skip}"
        inputs = {"model": model_stage[0].name, "fixed_skip": fixed_skip, "batch": p.eval_batch, "tasks": TASKS}
        if p.max_new_tokens is not None:  # (absent when unset: the full preset's keys stay as they were)
            inputs["max_new_tokens"] = p.max_new_tokens
        return self._stage(f"eval-{row_name}-{mode}", inputs | ({"swapped": True} if swapped else {}), build)

    def speed(self, seed: int, corpus, finetuned: dict[str, tuple[Path, dict]]) -> tuple[Path, dict]:
        p = self.preset
        names = [n for n in ("dense", "gamma-0.5", "gamma-0.34", "pmod-prd") if n in finetuned]

        def build(folder: Path) -> dict:
            controlled = {n: ROWS[n].skip for n in names if ROWS[n].scheme == "gamma"}
            return measure_speed({n: finetuned[n][1]["model"] for n in names}, corpus[0], p, seed, controlled)

        return self._stage("speed", {n: finetuned[n][0].name for n in names} | {
            "batches": p.speed_batches, "latency": p.latency_samples, "version": 4,
            "train_vision": p.train_tower}, build)

    # -- the whole thing -----------------------------------------------------------------------------------
    def run(self, only_seed: int | None = None) -> dict:
        """Every seed, or only `only_seed` (its stages are the ones a whole run computes for it: same keys)."""
        p = self.preset
        seeds = []
        for seed in range(p.seeds) if only_seed is None else [only_seed]:
            self._seed = seed
            corpus = self.corpus(seed)
            vision = self.vision(seed, corpus)
            dense = self.dense(seed, corpus, vision)
            arank = self.arank(seed, corpus, dense)
            finetuned = {name: self.finetune(seed, name, corpus, dense, arank, vision) for name in p.rows}
            evals = {}
            for name, stage in finetuned.items():
                evals[(name, "released")] = self.evaluate(seed, name, corpus, stage, None)
                if ROWS[name].scheme == "gamma":
                    evals[(name, "controlled")] = self.evaluate(seed, name, corpus, stage, ROWS[name].skip)
            evals[("dense", "swapped")] = self.evaluate(seed, "dense", corpus, finetuned["dense"], None, swapped=True)
            speed = self.speed(seed, corpus, finetuned)
            seeds.append({
                "seed": seed, "corpus": corpus[1]["manifest"], "vision": vision[1]["vision"] if vision else None,
                "dense": dense[1]["train"], "arank": arank[1],
                "rows": {name: stage[1]["train"] for name, stage in finetuned.items()},
                "evals": {f"{name}|{mode}": _eval_summary(json.loads(Path(stage[1]["run"]).read_text()),
                                                          Path(stage[1]["run"]).parent / "samples.jsonl")
                          for (name, mode), stage in evals.items()},
                "speed": speed[1],
                # each stage's seconds when it was computed (a cached one keeps its own), in pipeline order
                "stage_seconds": {done["stage"]: done["seconds"] for done in (
                    json.loads((self.stages / key / "done.json").read_text())
                    for key in dict.fromkeys(self.used.get(seed, [])))},
            })
        return {"preset": asdict(p), "seeds": seeds}


def arank_samples(corpus: Path, n: int) -> list[tuple[str, object]]:
    """ScienceQA-style prompts (as the paper computes ARank) on training scenes: the model's own questions."""
    from PIL import Image

    from modbench.models.prompt import vicuna_v1

    records = json.loads((corpus / "train" / "arank.json").read_text())[:n]
    return [(vicuna_v1(r["question"]), Image.open(corpus / "train" / r["image"]).convert("RGB")) for r in records]


def _eval_summary(run: dict, samples: Path | None = None) -> dict:
    """Accuracies in percent, efficiency from the per-sample records, sample counts (for binomial noise), and
    from lmms-eval's per-sample log the answers right per question kind."""
    from modbench.suite.check import task_samples

    out = {"acc": {}, "n": {}, "kinds": kind_tally(samples) if samples is not None and samples.exists() else {}}
    for column, (task, metric, scale) in BENCHMARKS.items():
        value = run["metrics"].get(task, {}).get(metric, {}).get("value")
        out["acc"][column] = None if value is None else value * scale
    eff = run.get("efficiency") or {}
    for column, (task, _, _) in BENCHMARKS.items():  # a group's samples are its member tasks'
        out["n"][column] = task_samples(run, task)
    routing = eff.get("routing_all_tokens") or {}
    out.update(tflops=eff.get("tflops_analytic"), tflops_dense=eff.get("tflops_dense_equivalent"),
               skip=eff.get("overall_skip"), kv_share=routing.get("kept_share_all_layers"),
               prompt_tokens=eff.get("avg_prompt_tokens"), image_tokens=eff.get("avg_image_tokens"),
               skip_by_type=_skip_by_type(eff))
    return out


def kind_tally(samples: Path) -> dict[str, list[int]]:
    """kind -> [right, asked] over one evaluation's samples (tasks.scenes.question_kind)."""
    from modbench.tasks.benchmarks import sample_score
    from modbench.tasks.scenes import question_kind

    tally: dict[str, list[int]] = {}
    with open(samples) as lines:
        for line in lines:
            record = json.loads(line)
            kind = question_kind(record["task"], record["doc"]["question"])
            score = sample_score(record)
            if kind is None or score is None:
                continue
            entry = tally.setdefault(kind, [0, 0])
            entry[0] += int(score >= 1.0)  # MME scores 1 per right answer; TextVQA's exact match is 0 or 1
            entry[1] += 1
    return tally


def _skip_by_type(eff: dict) -> dict:
    per_layer = (eff.get("routing_prefill") or {}).get("per_layer") or []
    return {"per_layer": per_layer}


# ---------------------------------------------------------------------------------------------------------
# speed: training step time and inference samples/s, side by side in one process


def measure_speed(model_dirs: dict[str, str], corpus: Path, preset: Preset, seed: int,
                  controlled: dict[str, float] | None = None) -> dict:
    """Each model trains on the same batches, steps interleaved across models (so drift in the machine's speed
    hits all alike): median step seconds and their parts (data, vision, LLM forward, backward, optimizer).
    Then inference: samples/s over the first held-out GQA samples at batch 1 (warm-up, repeats), γ-MoD models
    also at their controlled skip (`controlled`: row -> skip share, as "<row>|controlled")."""
    from modbench import models
    from modbench.suite.train import adamw, set_trainable
    from modbench.suite.train_data import Collate, EpochBatches, InstructionDataset

    loaded = {name: models.load(path).float() for name, path in model_dirs.items()}
    for model in loaded.values():  # the parameters fine-tuning trains: a pretrained tower stays frozen
        # as in the training stages, which read the frozen tower's cached output
        set_trainable(model, "finetune", train_vision=preset.train_tower, tower_output_cached=not preset.train_tower)
    first = next(iter(loaded.values()))
    dataset = InstructionDataset(corpus / "train" / "scenes.json", None, first.tokenizer,
                                 first.cfg.num_image_tokens, first.cfg.llm.max_position_embeddings)
    order = iter(EpochBatches(len(dataset), preset.batch_size, seed + 1000))
    collate = Collate(first.vision.preprocess, skip_bad=False)
    parts = {name: {k: [] for k in ("data", "vision", "llm_forward", "backward", "optimizer", "step")}
             for name in loaded}
    optimizers = {name: adamw([p for p in m.parameters() if p.requires_grad], lr=1e-5)
                  for name, m in loaded.items()}
    for m in loaded.values():
        m.train()
    for step in range(preset.speed_batches + 1):
        indices = next(order)
        t0 = time.perf_counter()
        batch = collate([dataset[i] for i in indices])
        data_seconds = time.perf_counter() - t0
        for name, model in loaded.items():
            t1 = time.perf_counter()
            features = model.encode_images(batch.pixels)
            t2 = time.perf_counter()
            assembled = model.assemble(batch.samples, features=features, pad_side="right")  # as train.py does
            out = model.language_model(inputs_embeds=assembled.inputs_embeds, token_types=assembled.token_types,
                                       labels=assembled.labels, logits_at_labels=True)
            t3 = time.perf_counter()
            out.loss.backward()
            t4 = time.perf_counter()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            t5 = time.perf_counter()
            if step:  # the first round is the warm-up
                for key, value in (("data", data_seconds), ("vision", t2 - t1), ("llm_forward", t3 - t2),
                                   ("backward", t4 - t3), ("optimizer", t5 - t4), ("step", data_seconds + t5 - t1)):
                    parts[name][key].append(value)
    # medians, and each timed step (the same batches in every model, in order: the paired ratios give the ratio's
    # standard error within one seed)
    train_speed = {name: {**{k: statistics.median(v) for k, v in p.items()}, "step_each": p["step"]}
                   for name, p in parts.items()}
    inference = {name: _samples_per_second(model.eval(), corpus, preset) for name, model in loaded.items()}
    for name, skip in (controlled or {}).items():
        loaded[name].cfg.mod.fixed_skip = skip  # the routing policy reads this spec object
        inference[f"{name}|controlled"] = _samples_per_second(loaded[name], corpus, preset)
    return {"train_step_seconds": train_speed, "inference": inference, "batch_size": preset.batch_size,
            "timed_steps": preset.speed_batches}


def _samples_per_second(model, corpus: Path, preset: Preset) -> dict:
    from modbench.suite.latency import LatencySpec, measure_latency, task_inputs

    inputs = task_inputs(model, "gqa_local", preset.latency_samples, 1, data_root=str(corpus / "eval"))
    result = measure_latency(model, LatencySpec(new_tokens=1, batch_size=1, warmup=1, repeats=3), inputs=inputs)
    seconds = result["seconds"]
    return {"samples_per_s": result["samples_per_s"], "prefill_median_s": seconds["prefill"]["median"],
            "end_to_end_median_s": seconds["end_to_end"]["median"], "kv_share": result["kv_cache"]["share_of_dense"],
            "end_to_end_each": result["end_to_end_each"], "inputs": len(inputs)}


# ---------------------------------------------------------------------------------------------------------
# statistics and verdicts


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


Z975 = 1.96  # the normal distribution's two-sided 95 % critical value: a verdict on known (sampling) noise


@dataclass
class Claim:
    """A claim of a paper, as a comparison of a measured quantity with a threshold. `direction` says which side
    holds it ('>=' or '<='); `se` is the standard error of the estimate (seed spread, or sampling noise with one
    seed); within `critical` se of the threshold the verdict is 'within noise' (t_critical: 1.96 for sampling noise,
    Student's t for a spread over few seeds)."""

    paper: str  # which paper and table
    claim: str
    paper_value: str
    threshold: float
    direction: str
    estimate: float
    se: float | None = None
    unit: str = ""
    note: str = ""
    values: list[float] = field(default_factory=list)
    critical: float = Z975

    @property
    def verdict(self) -> str:
        if self.estimate is None or math.isnan(self.estimate):
            return "not run"
        return verdict(self.estimate, self.se or 0.0, self.threshold, self.direction, self.critical)


def verdict(estimate: float, se: float, threshold: float, direction: str, critical: float = Z975) -> str:
    """'held' when the estimate clears the threshold by more than `critical` se, 'did not hold' when it misses it
    by more than that, else 'within noise'."""
    if direction not in (">=", "<="):
        raise ValueError(f"direction must be '>=' or '<=', got {direction!r}")
    margin = (estimate - threshold) if direction == ">=" else (threshold - estimate)
    if margin > critical * se or (se == 0 and margin >= 0):
        return "held"
    if margin < -critical * se:
        return "did not hold"
    return "within noise"


# Student's t, two-sided 95 % (the 0.975 quantile), by degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}


def t_critical(dof: int | None) -> float:
    """The two-sided 95 % critical value for a standard error estimated with `dof` degrees of freedom (a spread
    over dof + 1 seeds); None: a known-variance (binomial sampling) error, 1.96. Beyond 30 the Cornish-Fisher
    expansion, within 1e-3 of the exact quantile."""
    if dof is None:
        return Z975
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    if dof in _T975:
        return _T975[dof]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)


def accuracy_se(p_a: float, n_a: int, p_b: float, n_b: int) -> float:
    """Standard error (in points) of the difference of two accuracies in percent, binomial."""
    a, b = p_a / 100, p_b / 100
    return 100 * math.sqrt(max(a * (1 - a), 1e-4) / max(n_a, 1) + max(b * (1 - b), 1e-4) / max(n_b, 1))


# ---------------------------------------------------------------------------------------------------------
# entry point

SCOPES = {"gamma-mod": ("dense", "gamma"), "pmod": ("dense", "pmod"), "all": ("dense", "gamma", "pmod")}


def preset_for(name: str, scope: str = "all", seeds: int | None = None) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {name!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {sorted(SCOPES)}, got {scope!r}")
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    preset = PRESETS[name]
    rows = tuple(r for r in preset.rows if ROWS[r].scheme in SCOPES[scope])
    return replace(preset, rows=rows, seeds=seeds or preset.seeds)


def default_output(preset: str, scope: str = "all", seeds: int | None = None) -> Path:
    """results/reproduction/<preset> for the preset as defined (its committed results); another scope or number of
    seeds gets a folder of its own (e.g. quick-gamma-mod-2seeds), so it never replaces those."""
    name = preset + ("" if scope == "all" else f"-{scope}")
    if seeds is not None and seeds != PRESETS[preset].seeds:
        name += f"-{seeds}seeds"
    return Path("results/reproduction") / name


def rerender(output: str | Path) -> dict:
    """The tables, claims and plot written again from `output`/summary.json (the pipeline's result as it was
    recorded), with this checkout's report code; no stage runs. Returns that record."""
    from modbench.suite.reproduce_report import write_report
    from modbench.suite.results import SchemaError, load_results

    path = Path(output) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no reproduction's summary to render (run `modbench reproduce` first)")
    record = load_results(path)
    if record["kind"] != "reproduction" or not record["result"].get("seeds"):
        raise SchemaError(f"{path}: not a finished reproduction's summary (kind {record['kind']!r})")
    write_report(record["result"], output)
    return record


def seed_commands(scope: str, preset: str, seeds: int | None, output: Path, work: Path, cpu_isa: str
                  ) -> list[list[str]]:
    """One `modbench reproduce --seed K` command per seed of the preset (the stages of seed K into `work`)."""
    import sys

    count = preset_for(preset, scope, seeds).seeds
    return [[sys.executable, "-m", "modbench", "reproduce", scope, "--preset", preset,
             *(["--seeds", str(seeds)] if seeds is not None else []), "--seed", str(k), "--output", str(output),
             "--work", str(work), "--cpu-isa", cpu_isa] for k in range(count)]


def run_seed_processes(commands: list[list[str]], jobs: int, logs: Path, log=print) -> None:
    """The seeds' commands as one-thread processes, at most `jobs` at a time, each logging to logs/seed<K>.log;
    an error naming the failed seeds and their logs once all have ended."""
    import os
    import subprocess
    import sys

    def say(message: str) -> None:  # shown as it happens, also when stdout is a pipe (tox, a job's log)
        log(message)
        sys.stdout.flush()

    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    waiting, running, failed = list(enumerate(commands)), [], []
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                k, command = waiting.pop(0)
                handle = (logs / f"seed{k}.log").open("w")
                running.append((k, subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env),
                                handle))
                say(f"seed {k}: started, one thread (log: {logs / f'seed{k}.log'})")
            time.sleep(0.2)
            for entry in [e for e in running if e[1].poll() is not None]:
                k, process, handle = entry
                handle.close()
                running.remove(entry)
                say(f"seed {k}: " + ("done" if process.returncode == 0 else f"failed (exit {process.returncode})"))
                if process.returncode:
                    failed.append(k)
    finally:  # interrupted (Ctrl-C, SIGTERM): no seed process outlives this one; their stages resume later
        for _, process, handle in running:
            process.terminate()
            process.wait()
            handle.close()
    if failed:
        raise ChildProcessError("seed process(es) " + ", ".join(map(str, failed)) + " failed: see "
                                + ", ".join(str(logs / f"seed{k}.log") for k in failed))


def reproduce(scope: str = "all", preset: str = "quick", seeds: int | None = None, output: str | Path | None = None,
              work: str | Path | None = None, log=print, seed: int | None = None, cpu_isa: str = "avx2",
              jobs: int = 0) -> dict:
    """Run (or continue) the pipeline; write summary.json, the records of every run, the tables and the plot.
    With `seed`, only that seed's stages are computed into the stage cache (one job of an array over seeds) and
    no report is written: a run without `seed` on the same work folder then finds every stage cached.
    `jobs` > 0: the seeds are first computed as one-thread `--seed K` processes, at most `jobs` at once, and this
    process then writes the report with one thread (the thread count is part of the stage keys).
    `cpu_isa`: the CPU code paths (CPU_ISAS), pinned before torch computes anything in this process."""
    import shutil

    from modbench.suite.reproduce_report import write_report
    from modbench.suite.results import environment, results_record, write_json_atomic

    chosen = preset_for(preset, scope, seeds)
    output = Path(output or default_output(preset, scope, seeds))
    work = Path(work or f".cache/reproduce/{chosen.name}")
    started = time.perf_counter()  # with --jobs, the seeds' processes count too
    if jobs < 0 or (jobs and seed is not None):
        raise ValueError("--jobs must be positive (0, the default, runs the seeds in this process), and runs the "
                         "seeds itself: not with --seed")
    if jobs:
        run_seed_processes(seed_commands(scope, preset, seeds, output, work, cpu_isa), jobs, work / "logs", log)
    # with --jobs the report reads the one-thread seeds' stages, so its keys must say one thread too
    cpu = pinned_code_paths(cpu_isa, threads=1 if jobs else None)
    pipeline = Pipeline(chosen, work, log=log, cpu=cpu)
    if seed is not None:
        if not 0 <= seed < chosen.seeds:
            raise ValueError(f"--seed must be in 0..{chosen.seeds - 1}: the {chosen.name} preset runs {chosen.seeds} "
                             "seed(s) (--seeds changes that)")
        pipeline.run(only_seed=seed)
        log(f"seed {seed}: {len(pipeline.ran)} stage(s) computed, the rest cached in {work}; without --seed, the "
            "same command writes the report once every seed has run")
        return {"seed": seed, "stages_run": pipeline.ran, "work": str(work),
                "wall_seconds": time.perf_counter() - started}
    result = pipeline.run()
    # The run records (run.json of every evaluation, train.json of every training), one folder each, in the
    # layout `modbench check --runs` reads; per-sample logs stay in the stage cache (deterministic to redo).
    runs = output / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(output / "records", ignore_errors=True)
    for seed, keys in pipeline.used.items():
        for key in dict.fromkeys(keys):
            done = json.loads((work / "stages" / key / "done.json").read_text())
            target = runs / f"seed{seed}-{done['stage']}"
            if done.get("run"):
                shutil.copyfile(done["run"], _mkdir(target) / "run.json")
            if done.get("model"):
                shutil.copyfile(Path(done["model"]) / "train.json", _mkdir(target) / "train.json")
    record = results_record("reproduction", {"scope": scope, "preset": asdict(chosen), "work": str(work),
                                             "cpu_isa": cpu_isa, "jobs": jobs},
                            status="ok", result=result, stages_run=pipeline.ran,
                            wall_seconds=time.perf_counter() - started)
    record["environment"] = environment()
    write_json_atomic(output / "summary.json", record)
    paths = write_report(result, output)
    log(f"wrote {output / 'summary.json'}, {len(paths)} report files in {output} "
        f"({len(pipeline.ran)} stages computed, the rest cached in {work})")
    return record


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
