"""`modbench train`: data, the loop, the schemes, checkpoints (tiny models, CPU, seconds)."""

import json
import random

import pytest
import torch
from PIL import Image, ImageDraw

from modbench import models
from modbench.models.routing import IMAGE, QUESTION, RESPONSE, SYSTEM, RoutingContext
from modbench.suite.train import TrainConfig, train
from modbench.suite.train_data import (
    Collate,
    EpochBatches,
    InstructionDataset,
    SampleError,
    modality_grouped_order,
    modality_lengths,
    read_records,
)

COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60)}


def write_data(folder, n=16, seed=0, extra=()):
    """n drawn-circle samples (every fourth with a second turn), one text-only sample, plus `extra` records."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = rng.choice(list(COLOURS))
        image = Image.new("RGB", (40, 32), (240, 240, 240))
        ImageDraw.Draw(image).ellipse((8, 6, 32, 26), fill=COLOURS[colour])
        image.save(folder / f"img{i}.png")
        turns = [{"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": colour}]
        if i % 4 == 0:
            turns += [{"from": "human", "value": "Is there a circle?"}, {"from": "gpt", "value": "Yes"}]
        rows.append({"id": f"s{i}", "image": f"img{i}.png", "conversations": turns})
    rows.append({"id": "text", "conversations": [{"from": "human", "value": "Say yes."}, {"from": "gpt", "value": "Yes"}]})
    rows += list(extra)
    (folder / "data.json").write_text(json.dumps(rows))
    return folder / "data.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data"))


def config(data, output, **kw):
    base = dict(model="tiny-llava", data=str(data), output=str(output), steps=4, batch_size=4, lr=1e-3,
                log_every=2, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_conversation_labels_only_the_answers(tokenizer):
    from modbench.models.prompt import tokenize_conversation, tokenize_prompt, vicuna_v1

    turns = [("human", "<image>\nWhat colour?"), ("gpt", "red"), ("human", "Is it round?"), ("gpt", "Yes")]
    sample = tokenize_conversation(tokenizer, turns, has_image=True)
    answers = [i for i, label in enumerate(sample.labels) if label != -100]
    assert [sample.ids[i] for i in answers] == [sample.labels[i] for i in answers]
    assert {sample.types[i] for i in answers} == {RESPONSE} and sample.types.count(RESPONSE) == len(answers)
    text = tokenizer.decode([sample.ids[i] for i in answers])
    assert text.replace("</s>", "|") == "red|Yes|"
    assert set(sample.types[:sample.image_at]) == {SYSTEM} and QUESTION in sample.types
    # the first turn is tokenised exactly as an evaluation prompt with its answer
    first = tokenize_prompt(tokenizer, vicuna_v1("<image>\nWhat colour?"), True, "red")
    assert sample.ids[:len(first.ids)] == first.ids and sample.image_at == first.image_at
    # every piece tokenised on its own (they are encoded in one call): nothing merges across a boundary
    alone = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    before, after = vicuna_v1("<image>\nWhat colour?").split("<image>")
    assert sample.ids == ([tokenizer.bos_token_id] + alone(before) + alone(after) + alone("red") + [tokenizer.eos_token_id]
                          + alone("USER: Is it round? ASSISTANT:") + alone("Yes") + [tokenizer.eos_token_id])


def test_pieces_are_encoded_each_on_its_own_in_one_call(tokenizer):
    """Pieces whose joined text tokenises otherwise ("th" + "e" is one "the" token): a call that let them merge,
    dropped an empty piece or lost the order would differ. Also a sample without an image and one without an
    answer, against their pieces tokenised one by one."""
    from modbench.models.prompt import _ids_each, tokenize_prompt

    alone = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    pieces = ["th", "e", "", " ", "co", "lour", "  x"]
    assert alone("th") + alone("e") != alone("the")  # the case is one a merge would show
    assert _ids_each(tokenizer, pieces) == [alone(p) for p in pieces]
    assert _ids_each(tokenizer, ["", ""]) == [[], []]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    text_only = tokenize_prompt(tokenizer, "USER: th", False, "e")
    assert text_only.ids == [bos] + alone("USER: th") + alone("e") + [eos] and text_only.image_at is None
    unanswered = tokenize_prompt(tokenizer, "co<image>lour", True)
    assert unanswered.ids == [bos] + alone("co") + alone("lour") and unanswered.image_at == 1 + len(alone("co"))
    assert set(unanswered.labels) == {-100}


@pytest.mark.parametrize("record, message", [
    ({"id": "noimg", "image": "absent.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                              {"from": "gpt", "value": "a"}]}, "not found"),
    ({"id": "corrupt", "image": "corrupt.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                 {"from": "gpt", "value": "a"}]}, "unreadable"),
    ({"id": "placeholder", "conversations": [{"from": "human", "value": "<image>\nq"},
                                             {"from": "gpt", "value": "a"}]}, "but no image"),
    ({"id": "noplaceholder", "image": "img0.png", "conversations": [{"from": "human", "value": "q"},
                                                                    {"from": "gpt", "value": "a"}]}, "exactly once"),
    ({"id": "empty", "conversations": []}, "empty conversation"),
    ({"id": "onesided", "conversations": [{"from": "human", "value": "q"}]}, "one-sided"),
    ({"id": "long", "conversations": [{"from": "human", "value": "red " * 3000}, {"from": "gpt", "value": "a"}]},
     "exceed the model's context"),
])
def test_a_broken_sample_names_its_id_and_file_or_is_skipped_and_counted(record, message, tmp_path, tokenizer):
    path = write_data(tmp_path, n=4, extra=[record])
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    dataset = InstructionDataset(path, None, tokenizer, image_tokens=16, max_length=2048)
    collate = Collate(models.build_model("tiny-llava").vision.preprocess, skip_bad=False)
    items = [dataset[i] for i in range(len(dataset))]
    with pytest.raises(SampleError, match=rf"sample '{record['id']}' \({path}\).*{message}"):
        collate(items)
    batch = Collate(collate.preprocess, skip_bad=True)(items)
    assert len(batch) == 5 and [b.id for b in batch.bad] == [record["id"]]
    out = train(config(path, tmp_path / "out", steps=2, batch_size=5, skip_bad_samples=True))
    assert out["bad_samples"] >= 1 and record["id"] in out["bad_examples"][0]


def test_loss_falls_and_the_same_seed_gives_the_same_weights(data, tmp_path):
    first = train(config(data, tmp_path / "a", steps=8))
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["lm_loss"] < log[0]["lm_loss"] and first["steps"] == 8
    train(config(data, tmp_path / "b", steps=8))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "a" / "train.json").read_text())
    assert record["schema_version"] and record["environment"]["git"] and record["median_step_seconds"] > 0
    assert record["tokens_seen"] > 0 and set(log[0]) >= {"lm_loss", "routing_loss", "kept_share", "step_seconds",
                                                          "peak_memory", "lr"}


def test_saved_model_loads_and_evaluates_like_the_trained_one(data, tmp_path, prompts, images, monkeypatch):
    from modbench.models import checkpoints

    kept = {}
    original = checkpoints.save_authors_checkpoint

    def keep(model, *args, **kwargs):
        kept["model"] = model
        return original(model, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_authors_checkpoint", keep)
    train(config(data, tmp_path / "g", scheme="gamma", mod_layers="1-4", steps=2))
    loaded = models.load(str(tmp_path / "g"))
    assert loaded.cfg.mod.scheme == "gamma" and loaded.cfg.mod.layers == [1, 2, 3, 4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(prompts, images).logits, kept["model"](prompts, images).logits)


def test_pretrain_leaves_llm_and_towers_bit_identical(data, tmp_path):
    import modbench.suite.train as trainer

    dense = models.build_model("tiny-llava")
    train(config(data, tmp_path / "p", stage="pretrain", steps=2))
    after = models.load(str(tmp_path / "p")).state_dict()
    before = dense.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision.projector.") for k in changed)
    assert trainer.tower_modules(dense.vision) == [dense.vision.vision_tower]
    train(config(data, tmp_path / "f", steps=2))
    tuned = models.load(str(tmp_path / "f")).state_dict()
    changed = {k for k in before if not torch.equal(before[k], tuned[k])}
    assert any(k.startswith("language_model.") for k in changed)
    assert not any(k.startswith("vision.vision_tower.") for k in changed)  # frozen unless train_vision


def kill_after_step_2(cfg, monkeypatch) -> None:
    """Train `cfg` (save_every=2) and die right after its step-2 checkpoint, as a killed job would."""
    import modbench.suite.train as trainer

    original = trainer.save_checkpoint

    def save_then_die(accelerator, output, state, keep):
        path = original(accelerator, output, state, keep)
        if state["step"] == 2:
            raise KeyboardInterrupt("killed after the step-2 checkpoint")
        return path

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(trainer, "save_checkpoint", original)


def test_resume_after_a_kill_between_steps_equals_an_uninterrupted_run(data, tmp_path, monkeypatch):
    train(config(data, tmp_path / "whole", steps=6, grad_accum=2, batch_size=2))
    kill_after_step_2(config(data, tmp_path / "cut", steps=6, grad_accum=2, batch_size=2, save_every=2), monkeypatch)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config(data, tmp_path / "cut", steps=6, grad_accum=2, batch_size=2, save_every=2))
    with pytest.raises(ValueError, match="lr"):
        train(config(data, tmp_path / "cut", steps=6, grad_accum=2, batch_size=2, save_every=2, resume=True, lr=1))
    resumed = train(config(data, tmp_path / "cut", steps=6, grad_accum=2, batch_size=2, save_every=2, resume=True))
    assert resumed["steps"] == 6
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_while_saving_leaves_the_previous_checkpoint(data, tmp_path, monkeypatch):
    from accelerate import Accelerator

    import modbench.suite.train as trainer

    calls = {"n": 0}
    original = Accelerator.save_state

    def half_written(self, output_dir=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            (__import__("pathlib").Path(output_dir) / "partial").mkdir(parents=True)
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", half_written)
    with pytest.raises(KeyboardInterrupt):
        train(config(data, tmp_path / "o", steps=6, save_every=2))
    monkeypatch.setattr(Accelerator, "save_state", original)
    latest = trainer.latest_checkpoint(tmp_path / "o")
    assert latest.name == "step-00000002" and json.loads((latest / "trainer_state.json").read_text())["step"] == 2
    assert train(config(data, tmp_path / "o", steps=6, save_every=2, resume=True))["steps"] == 6


def test_shared_router_is_one_tensor_per_layer_routers_one_per_mod_layer(data, tmp_path):
    from modbench.models.convert import convert_to_mod
    from modbench.suite.train import mod_spec

    dense = models.build_model("tiny-llava")
    shared = convert_to_mod(dense, mod_spec(config(data, tmp_path), "gamma", [1, 2, 3]))
    per_layer = convert_to_mod(dense, mod_spec(config(data, tmp_path, router="per-layer"), "gamma", [1, 2, 3]))
    names = lambda m: sorted(k for k, _ in m.named_parameters() if ".routing." in k)  # noqa: E731
    assert names(shared) == ["language_model.model.routing.router.weight"]
    assert names(per_layer) == [f"language_model.model.routing.routers.{i}.weight" for i in (1, 2, 3)]
    train(config(data, tmp_path / "pl", scheme="gamma", mod_layers="1-3", router="per-layer", steps=2))
    loaded = models.load(str(tmp_path / "pl"))
    routers = [loaded.language_model.model.routing.routers[str(i)].weight for i in (1, 2, 3)]
    assert not torch.equal(routers[0], routers[1])  # distinct routers survive the released (repeated) layout


def test_converted_model_with_nothing_skipped_equals_dense(prompts, images):
    from modbench.models.config import ModSpec
    from modbench.models.convert import convert_to_mod

    dense = models.build_model("tiny-llava")
    with torch.no_grad():
        reference = dense(prompts, images).logits
        pmod = convert_to_mod(dense, ModSpec(scheme="pmod", layers=[1, 2, 3, 4], ratios=[1.0] * 4))
        # equal up to float summation order: routed layers pack each row's real tokens, dense ones mask pads
        torch.testing.assert_close(pmod(prompts, images).logits, reference)
        gamma = convert_to_mod(dense, ModSpec(scheme="gamma", layers=[1, 2, 3, 4], prefill_threshold=0.0))
        routing = gamma.language_model.model.routing
        # γ-MoD scales a kept token's MLP branch by p: with p = 1 the converted model is the dense one
        routing.keep_probability = lambda normed, layer: (None, torch.ones(normed.shape[:2]))
        torch.testing.assert_close(gamma(prompts, images).logits, reference)
    dense_state = dense.state_dict()
    assert all(torch.equal(v, dense_state[k]) for k, v in gamma.state_dict().items() if ".routing." not in k)


def test_a_converted_model_is_where_its_dense_model_was_buffers_included():
    """The buffers no state dict carries (RoPE's frequencies, CLIP's position ids) follow the dense model to its
    device too (the meta device stands for a GPU here), and keep their dtype."""
    from modbench.models.config import ModSpec
    from modbench.models.convert import convert_to_mod

    dense = models.build_model("tiny-llava").to("meta")
    for spec in (ModSpec(scheme="gamma", layers=[1, 2]), ModSpec(scheme="pmod", layers=[1, 2], ratios=[0.5, 0.5])):
        converted = convert_to_mod(dense, spec)
        dense_buffers = dict(dense.named_buffers())
        assert {k: (v.device.type, v.dtype) for k, v in converted.named_buffers()} == \
            {k: (v.device.type, v.dtype) for k, v in dense_buffers.items()}
        assert {p.device.type for p in converted.parameters()} == {"meta"}


@pytest.mark.parametrize("masked, routable_types", [("qa", {SYSTEM, IMAGE}), ("q", {SYSTEM, IMAGE, RESPONSE}),
                                                    ("none", {SYSTEM, IMAGE, QUESTION, RESPONSE})])
def test_masked_routing_skips_exactly_floor_fraction_of_the_routable_tokens(masked, routable_types):
    from modbench.models.gamma_mod import GammaModRouting

    types = torch.tensor([[0, 0, SYSTEM, SYSTEM, IMAGE, IMAGE, IMAGE, IMAGE, IMAGE, QUESTION, QUESTION, RESPONSE, RESPONSE],
                          [SYSTEM, IMAGE, IMAGE, IMAGE, IMAGE, IMAGE, IMAGE, IMAGE, QUESTION, QUESTION, QUESTION,
                           RESPONSE, RESPONSE]])
    ctx = RoutingContext(token_types=types, training=True)
    p = torch.rand(types.shape, generator=torch.Generator().manual_seed(0))
    keep = GammaModRouting.masked_top_k(p, ctx, 0.5, masked)
    for row in range(2):
        routable = torch.tensor([int(t) in routable_types for t in types[row]]) & ctx.real[row]
        skipped = ctx.real[row] & ~keep[row]
        assert int(skipped.sum()) == int(routable.sum()) // 2
        assert bool((skipped <= routable).all())  # force-kept tokens are never skipped
        assert not bool(keep[row][~ctx.real[row]].any())


def test_routing_loss_gradient_reaches_the_router_and_only_what_feeds_it(prompts, images):
    """As in the authors' code the router reads the layer's normed input undetached, so the routing loss also
    trains what produces that input — but nothing at or after a MoD layer's own attention and MLP."""
    from modbench.models.config import ModSpec
    from modbench.models.convert import convert_to_mod

    model = convert_to_mod(models.build_model("tiny-llava"), ModSpec(scheme="gamma", layers=[1, 2, 3]))
    model.train()
    out = model(prompts, images, answers=["red", "blue", "two"])
    out.routing_loss.backward()
    touched = {k for k, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum())}
    assert "language_model.model.routing.router.weight" in touched
    upstream = ("language_model.model.routing.", "language_model.model.embed_tokens.", "vision.",
                "language_model.model.layers.0.", "language_model.model.layers.1.", "language_model.model.layers.2.",
                "language_model.model.layers.3.input_layernorm.")
    assert all(k.startswith(upstream) for k in touched), sorted(k for k in touched if not k.startswith(upstream))
    assert "language_model.lm_head.weight" not in touched and "language_model.model.layers.3.mlp.up_proj.weight" not in touched


@pytest.mark.parametrize("variant", ["tiny-llava", "tiny-llava-hr"])
def test_cached_tower_features_stand_in_for_the_frozen_tower(variant, data, tmp_path):
    """The reproduction computes its frozen tower's output once (TowerFeatures) and trains from it: a batch read
    that way gives the loss the images give; a run trains from it and leaves the tower as it was; a tower being
    trained cannot use it."""
    from modbench.models.config import ConfigError
    from modbench.suite.train import TrainingForward
    from modbench.suite.train_data import TowerFeatures

    model = models.build_model(variant, seed=0).train()
    front = model.vision
    names = sorted(p.name for p in data.parent.glob("img*.png"))
    with torch.no_grad():
        pixels = front.preprocess([Image.open(data.parent / name).convert("RGB") for name in names])
        tower_out = front.tower_output(pixels)
    TowerFeatures.write(tmp_path / "tower.safetensors", names, tower_out, front.vision_tower)
    losses = []
    for features in (None, TowerFeatures(tmp_path / "tower.safetensors")):
        dataset = InstructionDataset(data, None, model.tokenizer, front.num_image_tokens, 512, features)
        batch = Collate(front.preprocess, skip_bad=False)([dataset[i] for i in (0, 3, 16, 5)])  # 16: text only
        assert (batch.pixels is None) == (features is not None)
        losses.append(TrainingForward(model)(batch).loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    # ...and the comparison can fail: another image's features move the loss (tiny-llava-hr's random multipath
    # tower gives nearly the same features for every image, so the loss barely moves there)
    if variant == "tiny-llava":
        swapped = TowerFeatures(tmp_path / "tower.safetensors")
        swapped.names = {name: (i + 1) % len(names) for name, i in swapped.names.items()}
        dataset = InstructionDataset(data, None, model.tokenizer, front.num_image_tokens, 512, swapped)
        moved = TrainingForward(model)(Collate(front.preprocess, skip_bad=False)([dataset[i] for i in (0, 3, 16, 5)])).loss
        assert not torch.allclose(moved, losses[0], rtol=1e-5, atol=1e-6)  # beyond the tolerance of the check above

    train(config(data, tmp_path / "run", model=variant, tower_features=str(tmp_path / "tower.safetensors")))
    tower, before = models.load(tmp_path / "run").vision.vision_tower.state_dict(), front.vision_tower.state_dict()
    # all of it: LLaVA-HR's adapters and fusion, inside the cached output, are frozen with it
    assert tower.keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in tower.items())
    record = json.loads((tmp_path / "run" / "train.json").read_text())
    assert record["parameters"]["trainable"] == sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in front.vision_tower.parameters())
    with pytest.raises(ConfigError, match="not with train_vision"):
        train(config(data, tmp_path / "bad", model=variant, tower_features=str(tmp_path / "tower.safetensors"),
                     train_vision=True))
    with pytest.raises(ValueError, match="another tower"):  # another seed's tower: its features do not apply
        train(config(data, tmp_path / "bad2", model=variant, tower_features=str(tmp_path / "tower.safetensors"),
                     seed=1))
    with pytest.raises(ConfigError, match="not one tower and a projector"):
        train(config(data, tmp_path / "bad3", tower_features=str(tmp_path / "tower.safetensors"),
                     model="tiny-mgm-hd"))
    # ARank reads the images themselves where training reads the cached output
    from modbench.suite.train import arank_samples

    dataset = InstructionDataset(data, None, model.tokenizer, front.num_image_tokens, 512,
                                 TowerFeatures(tmp_path / "tower.safetensors"))
    assert all(isinstance(image, Image.Image) for _, image in arank_samples(dataset, 3))


def test_gradient_checkpointing_and_bf16_and_workers_train(data, tmp_path):
    plain = train(config(data, tmp_path / "plain", steps=2))
    checkpointed = train(config(data, tmp_path / "ckpt", steps=2, gradient_checkpointing=True, scheme="gamma",
                                mod_layers="1-4"))
    assert checkpointed["final"]["lm_loss"] == pytest.approx(
        train(config(data, tmp_path / "ref", steps=2, scheme="gamma", mod_layers="1-4"))["final"]["lm_loss"], rel=1e-5)
    workers = train(config(data, tmp_path / "workers", steps=2, num_workers=1))  # tokenised in a worker process
    assert workers["final"]["lm_loss"] == plain["final"]["lm_loss"]
    bf16 = train(config(data, tmp_path / "bf16", steps=2, mixed_precision="bf16"))
    assert torch.isfinite(torch.tensor(bf16["final"]["lm_loss"]))


def test_yaml_config_is_a_view_and_unknown_keys_are_errors(tmp_path, data):
    from modbench.models.config import ConfigError

    (tmp_path / "t.yaml").write_text(f"model: tiny-llava\ndata: {data}\noutput: {tmp_path / 'y'}\nsteps: 3\n")
    cfg = TrainConfig.from_yaml(tmp_path / "t.yaml", {"lr": 0.5})
    assert cfg.steps == 3 and cfg.lr == 0.5 and cfg.batch_size == 8
    (tmp_path / "bad.yaml").write_text("model: tiny-llava\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="exactly one of steps or epochs"):
        train(config(data, tmp_path / "z", steps=0))


def test_arank_choice_keeps_the_first_and_last_layer_dense(data, tmp_path):
    out = train(config(data, tmp_path / "ar", scheme="gamma", arank_keep=2, arank_samples=4, steps=1))
    assert 0 not in out["mod_layers"] and 5 not in out["mod_layers"] and len(out["mod_layers"]) == 2
    assert len(out["mod_choice"]["arank"]["per_layer"]) == 6


def test_train_cli(data, tmp_path, capsys):
    from modbench.suite.cli import main

    code = main(["train", "--model", "tiny-llava", "--data", str(data), "--steps", "2", "--batch-size", "4",
                 "--scheme", "pmod", "--mod-layers", "2-5", "--ratios", "0.5", "--output", str(tmp_path / "c"),
                 "--no-progress", "--device", "cpu"])
    assert code == 0 and "pmod model, MoD layers [2, 3, 4, 5]" in capsys.readouterr().out
    assert main(["train", "--model", "tiny-llava", "--data", str(data), "--output", str(tmp_path / "d")]) == 2


def test_each_scheme_makes_its_own_training_spec():
    """`--scheme` reaches the scheme's class (models/routing.py registry): γ-MoD needs its layers, p-MoD has a
    schedule of its own and checks its kept ratios against the layers; a dense model is not converted to."""
    from modbench.models.config import ConfigError
    from modbench.suite.train import TrainConfig, mod_spec

    cfg = TrainConfig(model="m", data="d", output="o", steps=1, skip_fraction=0.3, router="per-layer", masked="q")
    spec = mod_spec(cfg, "gamma", [1, 2])
    assert (spec.scheme, spec.layers, spec.train_skip_fraction, spec.shared_router, spec.masked_tokens) == \
        ("gamma", [1, 2], 0.3, False, "q")
    with pytest.raises(ConfigError, match="train config: converting to γ-MoD needs its MoD layers"):
        mod_spec(cfg, "gamma", [])
    assert mod_spec(TrainConfig(ratios="0.4"), "pmod", [2, 3]).ratios == [0.4, 0.4]
    assert mod_spec(TrainConfig(), "pmod", []).layers == []  # progressive ratio decay picks them
    with pytest.raises(ConfigError, match="3 kept ratios for 2 MoD layers"):
        mod_spec(TrainConfig(ratios="0.4,0.3,0.2"), "pmod", [2, 3])
    with pytest.raises(ConfigError, match="not converted to dense"):
        mod_spec(cfg, "dense", [])


def test_every_training_steps_with_torchs_fused_adamw_the_same_update_as_adamw():
    """The fused step (one kernel of torch's own, bitwise equal on Intel and AMD CPUs; the unfused one's sqrt is
    MKL's vector math, which is not) is still AdamW: the same update to float rounding."""
    from modbench.suite.train import adamw

    ours, reference = torch.nn.Parameter(torch.randn(257)), torch.nn.Parameter(torch.randn(257))
    reference.data.copy_(ours.data)
    start = ours.detach().clone()
    fused = adamw([ours], lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW([reference], lr=1e-2, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for step in range(5):
        grad = torch.randn(257, generator=torch.Generator().manual_seed(step))
        ours.grad, reference.grad = grad.clone(), grad.clone()
        fused.step()
        plain.step()
    assert not torch.equal(ours.data, start)
    torch.testing.assert_close(ours.data, reference.data, rtol=0, atol=1e-6)


def test_modality_grouped_batches_hold_one_modality_and_follow_the_seed():
    """--group-by-modality-length (LLaVA's and γ-MoD's recipe): every global batch but the remainders' last one
    holds image samples only or text-only ones only, longest first; the order is a permutation drawn from
    (seed, epoch) alone; data-parallel ranks split each global batch between them."""
    rng = random.Random(0)
    lengths = [rng.randint(5, 90) * (1 if i % 3 else -1) for i in range(64)]  # 42 image, 22 text-only samples
    sampler = EpochBatches(len(lengths), 8, seed=3, lengths=lengths)
    order = sampler.order(0)
    assert sorted(order) == list(range(64))
    batches = list(sampler)
    assert len(batches) == 64 // 8
    pure = 42 // 8 + 22 // 8  # full batches of each modality; the remainders (2 + 6) come last, mixed
    for batch in batches[:pure]:
        assert len({lengths[i] > 0 for i in batch}) == 1
        assert [abs(lengths[i]) for i in batch] == sorted((abs(lengths[i]) for i in batch), reverse=True)
    assert {lengths[i] > 0 for i in batches[pure]} == {True, False}
    assert {lengths[batches[b][0]] > 0 for b in range(pure)} == {True, False}  # both kinds, shuffled together
    assert order == EpochBatches(64, 8, seed=3, lengths=lengths).order(0) != sampler.order(1)
    ranks = [list(EpochBatches(64, 8, seed=3, rank=r, world=2, lengths=lengths)) for r in (0, 1)]
    assert all(sorted(a + b) == sorted(g) for a, b, g in zip(*ranks, batches))
    one_kind = [abs(n) for n in lengths]  # one modality only: a permutation cut into batches, longest first
    assert sorted(modality_grouped_order(one_kind, 8, torch.Generator().manual_seed(0))) == list(range(64))


def test_training_grouped_by_modality_length(data, tmp_path):
    """The option reaches the sampler (image-only batches here, the one text-only sample left over) and the
    run's record; a resumed run must keep it (it decides the weights)."""
    lengths = modality_lengths(read_records(data))
    assert sum(n < 0 for n in lengths) == 1 and sum(n > 0 for n in lengths) == 16
    assert all(lengths[i] > 0 for batch in EpochBatches(17, 4, seed=0, lengths=lengths) for i in batch)
    record = train(config(data, tmp_path / "g", steps=2, group_by_modality_length=True))
    assert record["spec"]["group_by_modality_length"] is True
    with pytest.raises(ValueError, match="group_by_modality_length"):
        train(config(data, tmp_path / "g", steps=2, resume=True))


def test_turn_weights_give_each_answer_one_unit():
    from modbench.suite.train import turn_weights

    labelled = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 1, 0, 0, 1, 1, 0]]).bool()
    expected = [1 / 2, 1 / 2, 1, 1, 1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2]  # a run at a row's end and the next row's start: two
    torch.testing.assert_close(turn_weights(labelled), torch.tensor(expected, dtype=torch.float64))


def test_turn_weighted_loss_is_the_mean_over_answers_of_each_answers_mean(tmp_path):
    """loss_weighting 'turn': computed from the full logits by hand, per answer (a run of labelled positions)
    and then over answers; it differs from the token mean when answers differ in length (a long caption here)."""
    from modbench.suite.train import TrainingForward

    caption = {"id": "long", "image": "img0.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image."},
        {"from": "gpt", "value": "A large red circle on a light grey background, alone, near the middle."},
        {"from": "human", "value": "Is there a circle?"}, {"from": "gpt", "value": "Yes"}]}
    data = write_data(tmp_path / "d", n=4, extra=[caption])
    model = models.build_model("tiny-llava", seed=0).eval()
    dataset = InstructionDataset(data, None, model.tokenizer, model.vision.num_image_tokens, 512)
    batch = Collate(model.vision.preprocess, skip_bad=False)([dataset[i] for i in (0, 1, 5)])
    with torch.no_grad():
        token, turn = TrainingForward(model)(batch), TrainingForward(model, "turn")(batch)
        assembled = model.assemble(batch.samples, batch.pixels, pad_side="right")
        logits = model.language_model(inputs_embeds=assembled.inputs_embeds,
                                      token_types=assembled.token_types).logits[:, :-1]
    targets = assembled.labels[:, 1:]
    per_answer, every_token = [], []
    for row in range(targets.shape[0]):
        run = []
        for i in range(targets.shape[1] + 1):
            if i < targets.shape[1] and targets[row, i] != -100:
                run.append(torch.nn.functional.cross_entropy(logits[row, i], targets[row, i]))
            elif run:
                per_answer.append(torch.stack(run).mean())
                every_token += run
                run = []
    assert len(per_answer) == 2 + 1 + 2  # samples 0 (two turns) and 1 (one), the caption sample's two
    torch.testing.assert_close(turn.lm_loss, torch.stack(per_answer).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(token.lm_loss, torch.stack(every_token).mean(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(turn.lm_loss, token.lm_loss, rtol=1e-3)
    assert float(turn.loss_tokens[0]) == pytest.approx(5) and float(token.loss_tokens[0]) == len(every_token)


def test_loss_weighting_reaches_the_run_and_is_checked(data, tmp_path):
    from modbench.models.config import ConfigError

    record = train(config(data, tmp_path / "t", steps=2, loss_weighting="turn"))
    assert record["spec"]["loss_weighting"] == "turn"
    with pytest.raises(ValueError, match="loss_weighting"):  # it decides the weights: a resume must keep it
        train(config(data, tmp_path / "t", steps=2, resume=True))
    with pytest.raises(ConfigError, match="loss_weighting must be one of"):
        train(config(data, tmp_path / "bad", loss_weighting="answer"))


def test_a_tied_head_stays_tied_through_training_a_resume_and_the_saved_model(data, tmp_path, monkeypatch):
    """cpu-repro-llava-tied's head is its embedding: one parameter, trained once, written once (transformers'
    convention: no lm_head key, tie_word_embeddings in config.json), tied again on load and on resume."""
    import dataclasses

    from modbench import models
    from modbench.models.checkpoints import save_authors_checkpoint

    base = models.get_variant("tiny-llava")
    cfg = dataclasses.replace(base, llm=dataclasses.replace(base.llm, tie_word_embeddings=True))
    tied = models.build_model(cfg, seed=0)
    head, embedding = tied.language_model.lm_head.weight, tied.language_model.model.embed_tokens.weight
    assert head is embedding
    untied = sum(p.numel() for p in models.build_model(base, seed=0).parameters())
    assert sum(p.numel() for p in tied.parameters()) == untied - embedding.numel()
    save_authors_checkpoint(tied, tmp_path / "init", "llava", fmt="safetensors")
    assert json.loads((tmp_path / "init" / "config.json").read_text())["tie_word_embeddings"] is True
    init = str(tmp_path / "init")
    train(config(data, tmp_path / "whole", model=init, steps=6, batch_size=2))
    kill_after_step_2(config(data, tmp_path / "cut", model=init, steps=6, batch_size=2, save_every=2), monkeypatch)
    train(config(data, tmp_path / "cut", model=init, steps=6, batch_size=2, save_every=2, resume=True))
    whole, cut = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert set(whole) == set(cut) and all(torch.equal(whole[k], cut[k]) for k in whole)
    assert not any("lm_head" in k for k in whole)  # written once, as the embedding
    trained = models.load(str(tmp_path / "whole"))
    head, embedding = trained.language_model.lm_head.weight, trained.language_model.model.embed_tokens.weight
    assert head is embedding and not torch.equal(embedding, tied.language_model.model.embed_tokens.weight)


def test_converting_a_tied_model_keeps_its_head_tied():
    """γ-MoD and p-MoD fine-tune a converted copy of the dense model: its head must stay the embedding (cloned
    apart, the MoD rows would train a head of their own that the writer then drops)."""
    import dataclasses

    from modbench import models
    from modbench.models.config import ModSpec
    from modbench.models.convert import convert_to_mod

    base = models.get_variant("tiny-llava")
    dense = models.build_model(dataclasses.replace(base, llm=dataclasses.replace(base.llm, tie_word_embeddings=True)),
                               seed=0)
    dense_count = sum(p.numel() for p in dense.parameters())
    for mod in (ModSpec(scheme="gamma", layers=[1, 2, 3, 4]), ModSpec(scheme="pmod", layers=[1, 2, 3, 4])):
        converted = convert_to_mod(dense, mod)
        lm = converted.language_model
        assert lm.lm_head.weight is lm.model.embed_tokens.weight
        routers = sum(p.numel() for p in lm.model.routing.parameters())
        assert sum(p.numel() for p in converted.parameters()) == dense_count + routers
