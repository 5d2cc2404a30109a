"""One dense configuration of the reproduction, trained and evaluated alone: the probe behind the dense sweep in
results/reproduction/dense_sweep.md (what it takes for the dense model to clear chance on every held-out set).

    python scripts/dense_sweep.py NAME [--llm JSON] [--vision JSON] [--preset-fields JSON] [--teacher-forced N]
                                       [--probe-every K] [--seed K] [--cpu-isa avx2|portable|native]

trains the quick preset's model (`cpu-repro-llava-tied`; `--llm '{"tie_word_embeddings": false}'` for the
untied `cpu-repro-llava` of the sweep's earlier rows) with the given LlmConfig / VisionConfig / Preset field overrides (the tower from scratch
with the LLM, unless `"vision_steps"` pretrains it first, as the presets do) on the quick preset's
corpus (seed 0, or the corpus the overrides call for), evaluates the dense model through lmms-eval on the
held-out sets with the right images and with swapped ones, and prints the accuracies and the answers by question
kind. Stages are cached under /tmp/exp-NAME (--work), as the pipeline caches them. The CPU code paths are pinned
as `modbench reproduce` pins them (AVX2 by default); with no --llm / --vision overrides the model keeps the
presets' name, so the corpus and vision stages of a `modbench reproduce` work folder (copied into --work) are
reused."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--llm", default="{}", help='LlmConfig overrides, e.g. {"hidden_size": 128}')
    parser.add_argument("--vision", default="{}", help='VisionConfig overrides, e.g. {"num_layers": 4}')
    parser.add_argument("--preset-fields", default="{}", help='Preset overrides, e.g. {"turns": 8}')
    parser.add_argument("--work", default="")
    parser.add_argument("--seed", type=int, default=0, help="the corpus, tower and dense stage's seed (a preset's seed K)")
    parser.add_argument("--cpu-isa", default="avx2", choices=["avx2", "portable", "native"])
    parser.add_argument("--probe-every", type=int, default=0, metavar="K",
                        help="also: every K dense steps, held-out yes/no accuracy (existence, MME-style) and the "
                             "share of 'Yes' answers, from the Yes/No logits about 240 held-out scenes: when, if at all, "
                             "the dense model learns to check what a question claims")
    parser.add_argument("--teacher-forced", type=int, default=0, metavar="N",
                        help="also: answers right per training-turn kind, teacher-forced, on N held-out scenes and on "
                             "N training scenes (is the model overfitting its training scenes?)")
    args = parser.parse_args()

    from modbench.suite.reproduce import pinned_code_paths

    cpu = pinned_code_paths(args.cpu_isa)  # before torch computes anything; keyed as `modbench reproduce` keys
    from modbench import models
    from modbench.models import variants
    from modbench.suite.reproduce import PRESETS, Pipeline, _eval_summary
    from modbench.suite.reproduce_report import avg_acc
    from modbench.tasks.scenes import kind_chance

    base = models.get_variant(PRESETS["quick"].model)
    cfg = base
    if json.loads(args.llm) or json.loads(args.vision):
        cfg = dataclasses.replace(base, name=f"exp-{args.name}",
                                  llm=dataclasses.replace(base.llm, **json.loads(args.llm)),
                                  vision=dataclasses.replace(base.vision, **json.loads(args.vision)))
        variants.register_variant(cfg)
    # vision_steps 0 unless asked: the sweep's rows trained the tower from scratch with the LLM
    fields = {"vision_steps": 0, **json.loads(args.preset_fields)}
    preset = dataclasses.replace(PRESETS["quick"], model=cfg.name, rows=("dense",), **fields)
    pipe = Pipeline(preset, args.work or f"/tmp/exp-{args.name}", log=lambda *a: None, cpu=cpu)
    started = time.time()
    corpus = pipe.corpus(args.seed)
    vision = pipe.vision(args.seed, corpus)  # a pretrained, frozen tower (vision_steps > 0)
    if args.probe_every:
        probes = probe_during_training(args.name, args.probe_every, preset.image_size, train_keys(corpus[0]))
    dense = pipe.dense(args.seed, corpus, vision)
    if args.probe_every and not probes:
        print(f"{args.name}: the dense stage was cached, so nothing was probed (another --work trains it anew)")
    print(f"{args.name}: dense trained ({dense[1]['train']['steps']} steps, final loss "
          f"{dense[1]['train']['final']['lm_loss']:.3f}) in {time.time() - started:.0f} s", flush=True)
    for mode, swapped in (("right images", False), ("swapped images", True)):
        stage = pipe.evaluate(args.seed, "dense", corpus, dense, None, swapped=swapped)
        run = Path(stage[1]["run"])
        ev = _eval_summary(json.loads(run.read_text()), run.parent / "samples.jsonl")
        print(f"{args.name} {mode}: " + ", ".join(f"{k} {v:.1f}" for k, v in ev["acc"].items())
              + f"; avg {avg_acc(ev):.1f}")
        for kind, (right, asked) in sorted(ev["kinds"].items()):
            print(f"    {kind:40s} {100 * right / asked:5.1f} of {asked:3d} (chance {100 * kind_chance(kind):.1f})")
    if args.teacher_forced:
        for which in ("held-out", "training"):
            tally = teacher_forced(dense[1]["model"], preset, args.teacher_forced, which == "training",
                                   train_keys(corpus[0]), args.seed)
            print(f"{args.name} teacher-forced on {args.teacher_forced} {which} scenes: " + ", ".join(
                f"{kind} {100 * right / asked:.0f} % of {asked}" for kind, (right, asked) in tally.items()))


def train_keys(corpus_dir: Path) -> set[str]:
    """The corpus's training scene keys: a probe's held-out scenes must avoid them, as write_corpus's do (one-object
    scenes are few, and a fresh stream repeats many of them)."""
    return set(json.loads((corpus_dir / "train" / "scene_keys.json").read_text()))


def probe_during_training(name: str, every: int, image_size: int, avoid: set[str]) -> list[int]:
    """Make suite.train checkpoint every `every` steps and, at each checkpoint, print the yes/no probe on
    held-out scenes (none in `avoid`); the training itself is unchanged (the dense stage's cache key does not
    hold save_every). Returns the list of probed steps, filled as training runs."""
    import random

    import torch

    import modbench.suite.train as training
    from modbench.models.prompt import tokenize_prompt, vicuna_v1
    from modbench.tasks.scenes import SHORT, draw, mme_pair, q_exists, sample_scene

    rng = random.Random("yes-no-probe")
    probe = []
    for i in range(240):  # two thirds existence (random and adversarial negatives), one third MME-style
        scene = sample_scene(rng)
        while scene.key() in avoid:
            scene = sample_scene(rng)
        if i % 3 == 2:
            _, (yes, no) = mme_pair(scene, rng)
            question, answer = (yes, "Yes") if rng.random() < 0.5 else (no, "No")
            probe.append(("mme", scene, question + SHORT, answer))
        else:
            obj, answer = q_exists(scene, rng, ("random", "adversarial")[i % 3])
            probe.append(("exists", scene, f"Is there a {obj} in the image?{SHORT}", answer.capitalize()))
    images = [draw(scene, image_size) for _, scene, _, _ in probe]

    probed: list[int] = []

    def measure(vlm, step: int) -> None:
        probed.append(step)
        def first_answer_token(answer: str) -> int:
            sample = tokenize_prompt(vlm.tokenizer, vicuna_v1("Is there a red circle?"), True, answer)
            return next(label for label in sample.labels if label != -100)

        yes, no = first_answer_token("Yes"), first_answer_token("No")
        was_training = vlm.training
        vlm.eval()
        right, says_yes = {"exists": [0, 0], "mme": [0, 0]}, 0
        with torch.no_grad():
            for start in range(0, len(probe), 48):
                part = probe[start:start + 48]
                batch = vlm.build_batch([vicuna_v1(q) for _, _, q, _ in part], images[start:start + 48])
                logits = vlm.language_model(inputs_embeds=batch.inputs_embeds, token_types=batch.token_types,
                                            logits_to_keep=1).logits[:, -1]
                for (kind, _, _, answer), says in zip(part, (logits[:, yes] > logits[:, no]).tolist()):
                    right[kind][0] += (answer == "Yes") == says
                    right[kind][1] += 1
                    says_yes += says
        vlm.train(was_training)
        print(f"{name} step {step}: " + ", ".join(f"{k} {100 * r / n:.1f} %" for k, (r, n) in right.items())
              + f", says Yes {100 * says_yes / len(probe):.1f} %", flush=True)

    save, train = training.save_checkpoint, training.train

    def save_and_probe(accelerator, output, state, keep):
        measure(accelerator.unwrap_model(accelerator._models[0]).vlm, state["step"])
        return save(accelerator, output, state, keep)

    training.save_checkpoint = save_and_probe
    training.train = lambda cfg, log=print: train(dataclasses.replace(cfg, save_every=every), log=log)
    return probed


def teacher_forced(model_dir: str, preset, n: int, training_scenes: bool, avoid: set[str],
                   seed: int = 0) -> dict[str, list[int]]:
    """Per turn kind of the training format (the caption: its tokens, and whole captions), the share of answers
    whose every token is the model's argmax given the gold prefix, on fresh turns about n scenes: held-out ones
    (a stream of their own) or the corpus's first training scenes (the same draws write_corpus makes)."""
    import random

    import torch

    from modbench import models
    from modbench.models.prompt import tokenize_conversation
    from modbench.tasks.scenes import draw, sample_scene, training_turns

    model = models.load(model_dir).eval()
    rng = random.Random("teacher-forced")
    scene_rng = random.Random(f"train-{seed}")  # write_corpus's training stream for this seed
    tally: dict[str, list[int]] = {}
    for _ in range(n):
        scene = sample_scene(scene_rng if training_scenes else rng)
        while not training_scenes and scene.key() in avoid:  # held out: never a training scene
            scene = sample_scene(rng)
        turns = training_turns(scene, rng, preset.turns, preset.exists_weight, preset.caption, preset.yes_no_order,
                               preset.exists_pairs, preset.choice_weight, preset.option_lookup)
        conversation = []
        for k, (question, answer) in enumerate(turns):
            conversation += [("human", ("<image>\n" if k == 0 else "") + question), ("gpt", answer)]
        sample = tokenize_conversation(model.tokenizer, conversation, True)
        batch = model.assemble([sample], model.vision.preprocess([draw(scene, preset.image_size)]))
        with torch.no_grad():
            logits = model.language_model(inputs_embeds=batch.inputs_embeds, token_types=batch.token_types).logits
        right = (logits[0, :-1].argmax(-1) == batch.labels[0, 1:]).tolist()
        labelled = (batch.labels[0, 1:] != -100).nonzero().flatten().tolist()
        answers, run = [], [labelled[0]]  # each turn's answer tokens: consecutive labelled positions
        for position in labelled[1:]:
            if position != run[-1] + 1:
                answers.append(run)
                run = []
            run.append(position)
        answers.append(run)
        for (question, _), positions in zip(turns, answers):
            kind = "caption" if question.startswith("Describe") else " ".join(question.split()[:3])
            entry = tally.setdefault(kind, [0, 0])
            entry[0] += all(right[p] for p in positions)
            entry[1] += 1
            if kind == "caption":
                tokens = tally.setdefault("caption tokens", [0, 0])
                tokens[0] += sum(right[p] for p in positions)
                tokens[1] += len(positions)
    return dict(sorted(tally.items(), key=lambda kv: -kv[1][1]))


if __name__ == "__main__":
    main()
