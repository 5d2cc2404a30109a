"""FLOPs (the papers' prefill count on the meta device, torch counter, fvcore), latency report, KV share, routing
statistics."""

import dataclasses
import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from modbench import models
from modbench.models.config import ModSpec
from modbench.models.flops import (
    FIT_TOKENS,
    decoder_layer_counts,
    fit_layer_polynomial,
    flops_analytic,
    flops_for_tokens,
    flops_full_meta,
    fvcore_flops,
    kv_hidden,
    layer_flops,
    layer_polynomial,
    llm_layer_flops,
    tokens_per_layer,
    torch_flop_counter,
)
from modbench.models.pmod import mean_kept_ratio, pmod_layers_and_ratios
from modbench.models.variants import with_mod
from modbench.suite.cli import main as cli_main
from modbench.suite.latency import LatencySpec, measure_latency, quantiles


@pytest.mark.parametrize("name, skip, expected", [
    ("llava-hr-7b", None, 19.16),
    ("llava-hr-7b-gmod-0.5", 0.577, 9.27),
    ("llava-hr-7b-gmod-0.5", 0.379, 12.59),
    ("llava-hr-13b", None, 37.13),
    ("llava-hr-13b-gmod-0.34", 0.349, 25.14),
    ("llava-hr-13b-gmod-0.5", 0.551, 18.36),
])
def test_analytic_tflops_match_the_papers(name, skip, expected):
    assert round(flops_analytic(models.get_variant(name), 1400, skip)["tflops"], 2) == expected


def gqa(cfg, kv_heads):
    return dataclasses.replace(cfg, name=f"{cfg.name}-kv{kv_heads}", llm=dataclasses.replace(cfg.llm, num_kv_heads=kv_heads))


@pytest.mark.parametrize("cfg", [
    models.get_variant("llava-hr-7b"),  # dense, 7B-shaped
    gqa(models.get_variant("llava-hr-7b"), 8),  # grouped K/V heads
    models.get_variant("llava-hr-13b-gmod-0.5"),  # γ-MoD, 13B-shaped
    models.get_variant("pmod-llava-next-7b"),  # p-MoD
    models.get_variant("tiny-llava"),
    gqa(models.get_variant("tiny-llava-hr-gmod"), 2),
    models.get_variant("tiny-pmod-llava-next"),
], ids=lambda cfg: cfg.name)
def test_the_count_on_the_real_layers_equals_the_papers_formula(cfg):
    """The prefill count (the tables' TFLOPs) comes from the decoder layers on the meta device; it is the papers'
    formula exactly: 4h^2 + 4h*h_kv + 6hI per token, 4h per token squared, at whole and fractional counts."""
    h, mlp, kv = cfg.llm.hidden_size, cfg.llm.intermediate_size, kv_hidden(cfg)
    assert layer_polynomial(cfg) == (4 * h * h + 4 * h * kv + 6 * h * mlp, 4 * h)
    skip = 0.577 if cfg.mod.scheme == "gamma" else None
    for seq_len in (1, 17, 577.25, 1400, 2880):
        image_tokens = int(0.75 * seq_len) if cfg.mod.scheme == "pmod" else None  # p-MoD: the routed vision tokens
        record = flops_analytic(cfg, seq_len, skip, image_tokens)
        papers = [layer_flops(t, h, mlp, kv) for t in record["tokens_per_layer"]]
        assert record["flops_per_layer"] == pytest.approx(papers, rel=1e-12, abs=0)
        assert record["tflops"] == pytest.approx(sum(papers) / 1e12, rel=1e-12, abs=0)


def test_the_layer_count_runs_the_decoder_loop_on_meta_routed_and_dense(monkeypatch):
    """decoder_layer_counts runs ModDecoder's own loop on the meta device: layer l on FIT_TOKENS[l] tokens, on the
    routed (packed) path below the prompt's length and on the whole prompt at it; the RNG is left alone."""
    from modbench.models.core import ModDecoder

    ran = []
    original = ModDecoder._run_layer

    def spy(self, layer_idx, hidden, normed, positions, ctx, cache, route, want_attn, shared=None):
        ran.append((layer_idx, hidden.shape[1] if route is None else route.kept_per_row, route is None, hidden.is_meta))
        return original(self, layer_idx, hidden, normed, positions, ctx, cache, route, want_attn, shared)

    monkeypatch.setattr(ModDecoder, "_run_layer", spy)
    rng = torch.get_rng_state()
    llm = models.get_variant("llava-hr-13b").llm
    counts = decoder_layer_counts(llm)
    assert torch.equal(rng, torch.get_rng_state())
    assert [(i, n, dense) for i, n, dense, _ in ran] == [(0, 1, False), (1, 2, False), (2, 3, False), (3, 4, True)]
    assert all(meta for *_, meta in ran)
    assert counts == [int(layer_flops(s, llm.hidden_size, llm.intermediate_size)) for s in FIT_TOKENS]
    eager = decoder_layer_counts(models.get_variant("tiny-llava").llm, attn_implementation="eager")
    assert eager == decoder_layer_counts(models.get_variant("tiny-llava").llm)  # every kernel counts the s x s block


def test_counts_that_are_not_a_s_plus_b_s2_are_an_error():
    assert fit_layer_polynomial({1: 7, 2: 18, 3: 33, 4: 52}) == (5.0, 2.0)
    with pytest.raises(ValueError, match=r"not a\*s \+ b\*s\^2.*miss s = \[3, 4\]"):
        fit_layer_polynomial({s: 5 * s + 2 * s * s + 1 for s in FIT_TOKENS})  # a constant term
    with pytest.raises(ValueError, match=r"miss s = \[3, 4\]"):
        fit_layer_polynomial({s: 5 * s + 2 * s * s + s**3 for s in FIT_TOKENS})  # a cubic one
    with pytest.raises(ValueError, match="three points or more"):
        fit_layer_polynomial({1: 7, 2: 18})


def test_the_count_is_made_once_per_llm_config():
    from modbench.models.flops import _layer_polynomial

    cfg = models.get_variant("llava-hr-7b")
    layer_polynomial(cfg)
    before = _layer_polynomial.cache_info()
    routed = models.get_variant("llava-hr-7b-gmod-0.5")  # another name and scheme, the same LLM
    assert layer_polynomial(routed) == layer_polynomial(cfg)
    after = _layer_polynomial.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (2, 0)


def test_flops_cli_prints_the_paper_figure(capsys):
    assert cli_main(["flops", "--model", "llava-hr-7b-gmod-0.5", "--seq-len", "1400", "--skip", "0.577"]) == 0
    assert capsys.readouterr().out.startswith("9.27 TFLOPs")
    assert cli_main(["flops", "--model", "llava-hr-7b-gmod-0.5", "--seq-len", "1400"]) == 2  # skip required


def gmod_skipping():
    return with_mod(models.get_variant("tiny-llava"), "gmod-fixed",
                    ModSpec(scheme="gamma", layers=[1, 2, 3, 4], fixed_skip=0.5))


@pytest.mark.parametrize("spec", ["tiny-llava", "tiny-llava-pmod", "gmod"])
def test_torch_counter_agrees_with_analytic_on_the_routed_path(spec, prompts, images):
    model = models.build_model(gmod_skipping() if spec == "gmod" else spec)
    with torch.no_grad(), torch_flop_counter(depth=None) as counter:
        out = model(prompts[:1], images[:1], collect_stats=True)
    tokens = out.kept[0].sum(dim=1).double().tolist()  # tokens each layer really ran
    if spec != "tiny-llava":
        assert min(tokens) < max(tokens)  # something was routed
    analytic = flops_for_tokens(model.cfg, tokens)["tflops"] * 1e12
    measured = llm_layer_flops(counter)
    assert measured == pytest.approx(analytic, rel=0.02)


def test_measure_sample_flops_record(prompts, images):
    from modbench.models.flops import measure_sample_flops

    record = measure_sample_flops(models.build_model(gmod_skipping()), prompts[0], images[0])
    assert record["tflops_llm_measured"] == pytest.approx(record["tflops_llm_analytic"], rel=0.02)
    assert record["tflops_total_measured"] > record["tflops_llm_measured"]  # vision, router, lm_head too
    assert record["seq_len"] == max(record["tokens_per_layer"]) > min(record["tokens_per_layer"])


def test_cpu_attention_kernel_is_counted():
    q = torch.randn(1, 4, 10, 16)
    for mask in (None, torch.zeros(1, 1, 10, 10)):
        with torch_flop_counter() as counter:
            torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask, is_causal=mask is None)
        assert counter.get_total_flops() == 4 * 10 * 10 * 64  # 2 matmuls of s x s x (heads * head_dim)


def test_fvcore_counts_half_of_the_torch_counter():
    model = models.build_model("tiny-llava")
    mlp = model.language_model.model.layers[0].mlp
    x = torch.randn(1, 7, model.cfg.llm.hidden_size)
    with FlopCounterMode(display=False) as counter:
        mlp(x)
    assert fvcore_flops(mlp, (x,)) * 2 == counter.get_total_flops() > 0


def test_full_accounting_on_meta_matches_analytic_llm_part():
    cfg = models.get_variant("llava-hr-7b-gmod-0.5")
    record = flops_full_meta(cfg, 1400, 0.5, new_tokens=2)
    parts = record["tflops_per_component"]
    assert set(parts) == {"vision_encoder", "projector", "llm_prefill", "router", "lm_head", "llm_decode"}
    assert parts["llm_prefill"] == pytest.approx(flops_analytic(cfg, 1400, 0.5)["tflops"], rel=1e-3)
    assert all(v > 0 for v in parts.values())
    assert record["tflops"] == pytest.approx(sum(parts.values()))


@pytest.mark.parametrize("variant", ["tiny-llava-hr-gmod", "tiny-pmod-llava-next", "tiny-mgm-hd-gmod"])
def test_the_analytic_count_equals_the_real_decoder_on_meta_for_each_family_and_scheme(variant):
    """The tables' and efficiency records' prefill count (flops_analytic: the per-layer polynomial of the layers) is
    what the model's whole decoder loop runs on the meta device (`--full`; it also counts the rotary tables' small
    matmul), for γ-MoD and p-MoD on three host families (LLaVA-HR, LLaVA-NeXT, Mini-Gemini-HD)."""
    cfg = models.get_variant(variant)
    prefill = flops_full_meta(cfg, 200, 0.5)["tflops_per_component"]["llm_prefill"]
    assert prefill == pytest.approx(flops_analytic(cfg, 200, 0.5)["tflops"], rel=1e-6)


def test_full_accounting_runs_the_models_own_decoder_loop_on_meta(monkeypatch):
    """The LLM's FLOPs come from ModDecoder's loop itself (each layer on the tokens the scheme keeps, then decode
    steps through the cache), not from a copy of what a layer does."""
    from modbench.models.core import ModDecoder

    cfg = models.get_variant("llava-hr-7b-gmod-0.5")
    ran = []
    original = ModDecoder._run_layer

    def spy(self, layer_idx, hidden, normed, positions, ctx, cache, route, want_attn, shared=None):
        out = original(self, layer_idx, hidden, normed, positions, ctx, cache, route, want_attn, shared)
        ran.append((layer_idx, hidden.shape[1] if route is None else route.kept_per_row, hidden.is_meta))
        return out

    monkeypatch.setattr(ModDecoder, "_run_layer", spy)
    flops_full_meta(cfg, 1400, 0.5, new_tokens=2)
    layers = cfg.llm.num_layers
    assert [(i, n) for i, n, _ in ran[:layers]] == [(i, round(n)) for i, n in
                                                    enumerate(tokens_per_layer(cfg, 1400, 0.5))]
    assert [(i, n) for i, n, _ in ran[layers:]] == [(i, 1) for i in range(layers)] * 2  # two decode steps
    assert all(meta for _, _, meta in ran)


def test_quantiles():
    q = quantiles([float(v) for v in range(1, 11)])
    assert (q["p10"], q["median"], q["p90"], q["n"]) == (pytest.approx(1.9), 5.5, pytest.approx(9.1), 10)


def test_latency_report_has_every_field_positive_and_ordered(images):
    model = models.build_model(gmod_skipping())
    spec = LatencySpec(image_tokens=40, prompt_tokens=12, new_tokens=4, batch_size=2, warmup=1, repeats=3)
    report = measure_latency(model, spec, image=images[0])
    json.dumps(report)  # serialisable
    for phase in ("vision_encode", "prefill", "decode_per_token", "end_to_end"):
        stats = report["seconds"][phase]
        assert 0 < stats["p10"] <= stats["median"] <= stats["p90"]
    assert report["seconds"]["decode_per_token"]["n"] == 3 * 3
    each = report["end_to_end_each"]  # one per timed pass over the one input: the median is theirs
    assert len(each) == 3 and report["seconds"]["end_to_end"]["median"] == pytest.approx(sorted(each)[1])
    assert report["samples_per_s"] > 0 and report["peak_memory"]["bytes"] > 0
    assert report["timer"] == "perf_counter"
    kv = report["kv_cache"]
    assert len(kv["bytes_per_layer"]) == model.cfg.llm.num_layers and all(b > 0 for b in kv["bytes_per_layer"])
    assert 0 < kv["share_of_dense"] < 1
    routing = report["routing"]
    routable = min(6, 12 // 2) + 40  # system tokens + image tokens
    seq = 40 + 12
    assert routing["overall_skip"] == pytest.approx(math.floor(0.5 * routable) / seq)
    assert routing["per_layer"][0]["skip"] == 0 and routing["per_layer"][1]["skip_question"] == 0


def test_kv_share_of_pmod_equals_mean_kept_ratio_of_its_schedule():
    model = models.build_model("tiny-llava-pmod")
    n = 100
    report = measure_latency(model, LatencySpec(image_tokens=n, prompt_tokens=0, new_tokens=1, warmup=0, repeats=1))
    layers, ratios = pmod_layers_and_ratios(model.cfg.mod, model.cfg.llm.num_layers)
    kept = dict(zip(layers, ratios))
    expected = sum(math.floor(n * kept[i]) / n if i in kept else 1.0 for i in range(model.cfg.llm.num_layers))
    share = report["kv_cache"]["share_of_dense"]
    assert share == pytest.approx(expected / model.cfg.llm.num_layers)
    assert share == pytest.approx(mean_kept_ratio(model.cfg.mod, model.cfg.llm.num_layers), abs=1 / n)


def test_latency_cli_compare_writes_results(tmp_path, capsys):
    out = tmp_path / "lat.json"
    code = cli_main(["latency", "--model", "tiny-llava", "--compare", "tiny-llava-gmod", "--image-tokens", "16",
                     "--prompt-tokens", "8", "--new-tokens", "2", "--repeats", "2", "--device", "cpu",
                     "--output", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["schema_version"] and data["environment"]["torch"] == torch.__version__
    assert len(data["runs"]) == 2 and data["comparisons"][0]["flops_ratio"] > 0
    assert "prefill time x" in capsys.readouterr().out


def test_dtype_override_is_validated():
    cfg = dataclasses.replace(models.get_variant("tiny-llava"))
    cfg.dtype = "float8"
    with pytest.raises(models.ConfigError, match="dtype"):
        models.config.validate(cfg)


def test_latency_on_task_samples(tmp_path):
    from modbench.suite.latency import task_inputs
    from modbench.tasks.fixtures import write_all
    from modbench.tasks.registry import DATA_DIR, check_data

    try:
        check_data(["gqa_local"])
    except FileNotFoundError:
        write_all(DATA_DIR, ["gqa"])
    model = models.build_model(gmod_skipping())
    inputs = task_inputs(model, "gqa_local", limit=3, batch_size=2)
    assert [i.inputs_embeds.shape[0] for i in inputs] == [2, 1]
    report = measure_latency(model, LatencySpec(new_tokens=3, warmup=0, repeats=2), inputs=inputs)
    assert report["n_inputs"] == 2 and report["seconds"]["prefill"]["n"] == 4
    assert report["routing"]["overall_skip"] > 0 and report["samples_per_s"] > 0
    out = tmp_path / "lat.json"
    assert cli_main(["latency", "--model", "tiny-llava", "--task", "gqa_local", "--limit", "2", "--repeats", "1",
                     "--new-tokens", "2", "--device", "cpu", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["spec"]["task"] == "gqa_local"


def test_latency_times_the_real_generation_loop(monkeypatch, images):
    """measure_latency runs models.core.greedy_generate (the loop the plugin runs), forced to new_tokens, and
    its phases are that loop's step times: one prefill and new_tokens - 1 decode steps per timed run."""
    import modbench.suite.latency as latency

    calls = []
    real = latency.greedy_generate

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((kwargs["max_new_tokens"], kwargs["min_new_tokens"], len(out["step_seconds"])))
        return out

    monkeypatch.setattr(latency, "greedy_generate", spy)
    model = models.build_model(gmod_skipping())
    report = measure_latency(model, LatencySpec(image_tokens=16, prompt_tokens=8, new_tokens=4, warmup=1, repeats=2),
                             image=images[0])
    assert calls == [(4, 4, 4)] * 3  # warm-up + two repeats, every step run: no early EOS
    assert report["seconds"]["prefill"]["n"] == 2 and report["seconds"]["decode_per_token"]["n"] == 6
    assert report["loop"] == "modbench.models.core.greedy_generate"


def test_the_plugin_and_the_latency_task_mode_build_the_same_sample(monkeypatch):
    """Both build each sample through models.prompt.task_sample (so what is timed is what is evaluated)."""
    import modbench.models.lmms_plugin as plugin
    import modbench.models.prompt as prompt_module
    from modbench.models.prompt import IMAGE_PLACEHOLDER, task_prompt, task_sample
    from modbench.suite.latency import task_inputs
    from modbench.tasks.fixtures import draw_shapes, write_all
    from modbench.tasks.registry import DATA_DIR, check_data

    try:
        check_data(["gqa_local"])
    except FileNotFoundError:
        write_all(DATA_DIR, ["gqa"])
    seen = []

    def spy(context, visuals, where="sample"):
        seen.append(where)
        return task_sample(context, visuals, where)

    monkeypatch.setattr(prompt_module, "task_sample", spy)
    monkeypatch.setattr(plugin, "task_sample", spy)
    instance = plugin.ModbenchLmms(pretrained="tiny-llava")
    instance.task_dict = {"t": {"test": [{"image": draw_shapes([("circle", "red")])}]}}
    instance._sample("What colour?", lambda doc: [doc["image"]], "t", "test", 0)
    task_inputs(instance.model, "gqa_local", limit=2)
    assert seen == ["t doc 0", "gqa_local doc 0", "gqa_local doc 1"]

    image = draw_shapes([("circle", "red")]).convert("L")
    prompt, rgb = task_sample("What colour?", [None, image], "t doc 0")
    assert prompt == task_prompt("What colour?", True) and IMAGE_PLACEHOLDER in prompt and rgb.mode == "RGB"
    assert task_sample("What colour?", None) == (task_prompt("What colour?", False), None)
    with pytest.raises(ValueError, match="t doc 3: 2 images"):
        task_sample("q", [image, image], "t doc 3")


def test_a_meta_count_that_is_not_the_papers_convention_is_an_error(monkeypatch):
    """The records say the prefill count is the papers' 8sh^2 + 4s^2h + 6shI: a counter that lost the attention op
    or stopped matching the layers' names (all zeros) raises instead of writing another TFLOPs column."""
    from modbench.models import flops

    cfg = dataclasses.replace(models.get_variant("tiny-llava"), name="odd-count",
                              llm=dataclasses.replace(models.get_variant("tiny-llava").llm, hidden_size=96))
    for counts in ([0, 0, 0, 0], [5 * s for s in flops.FIT_TOKENS]):
        flops._layer_polynomial.cache_clear()
        monkeypatch.setattr(flops, "decoder_layer_counts", lambda llm, counts=counts: counts)
        with pytest.raises(ValueError, match="differ from the papers'"):
            flops.flops_for_tokens(cfg, [10.0])
    flops._layer_polynomial.cache_clear()
