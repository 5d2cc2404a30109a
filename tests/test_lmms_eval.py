"""Our models in the unmodified lmms-eval, on fixture copies of the benchmarks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modbench.suite.runner import RunSpec, run
from modbench.tasks import registry
from modbench.tasks.registry import DATA_DIR, local_tasks

LOCAL_TASKS = ["pope_local", "mme_local", "gqa_local", "scienceqa_img_local", "textvqa_val_local",
               "textvqa_val_ocr_local", "mmmu_val_local", "seedbench_local", "vizwiz_vqa_val_local",
               "vqav2_val_local", "mmbench_en_dev_local", "mmvet_local"]
LETTER_TASKS = ("scienceqa_img_local", "mmmu_val_local")


@pytest.fixture(scope="session", autouse=True)
def fixture_data():
    from modbench.tasks.fixtures import write_all

    if not all(p.exists() for t in LOCAL_TASKS for p in registry.data_files_for(t)):
        write_all(DATA_DIR)


def test_every_local_task_has_its_data_and_a_yaml():
    from modbench.tasks.registry import data_files_for

    for task in LOCAL_TASKS:
        files = data_files_for(task)
        assert files and all(p.exists() for p in files), task
    assert set(local_tasks()["pope_local"]["tasks"]) == {"pope_local_adversarial", "pope_local_popular",
                                                          "pope_local_random"}


CLI_TASKS = ["pope_local", "scienceqa_img_local", "gqa_local", "mmvet_local"]


def test_lmms_eval_cli_runs_our_plugin_data_parallel(tmp_path):
    """The unmodified lmms-eval CLI, under torchrun with two processes (gloo on a CPU), finds the plugin (entry
    point) and our tasks (--include_path); lmms-eval shards the requests and each rank records its own. Every
    task runs through the plugin in-process in the next test; this one pays the CLI's start-up once."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MODBENCH_RECORDS": str(tmp_path / "r.jsonl")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lmms_eval",
           "--model", "modbench", "--model_args", "pretrained=tiny-llava-gmod,protocol=llava",
           "--tasks", ",".join(CLI_TASKS), "--include_path", str(Path(__file__).resolve().parent.parent / "tasks"),
           "--limit", "2", "--batch_size", "2", "--output_path", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())["results"]
    assert set(CLI_TASKS) <= set(results)
    per_rank = [[json.loads(line) for line in (tmp_path / f"r.jsonl.rank{r}").read_text().splitlines()]
                for r in (0, 1)]
    records = per_rank[0] + per_rank[1]
    assert len(records) == 2 * (len(CLI_TASKS) + 2)  # pope_local is three tasks
    assert len(per_rank[0]) == len(per_rank[1])  # each task's two samples split across the two processes
    limits = {"mmvet_local": 64, **{t: 1 for t in LETTER_TASKS}}  # llava protocol
    assert all(r["status"] == "ok" and r["generated_tokens"] <= limits.get(r["task"], 6) for r in records)
    assert results["mmvet_local"]["gpt_eval_score,none"] == "not scored"  # no judge configured: never 0


def test_modbench_run_writes_a_complete_results_file(tmp_path):
    model = "tiny-llava-gmod"  # the routed path; dense layers are its special case
    outcome = run(RunSpec(model=model, tasks=LOCAL_TASKS, limit=2, protocol="llava", output=str(tmp_path)), progress=False)
    assert outcome.status == "ok", outcome.errors
    data = json.loads((outcome.run_dir / "run.json").read_text())
    assert data["schema_version"] and data["status"] == "ok" and data["environment"]["lmms_eval"] == "0.7.3"
    assert data["spec"]["model"] == model and data["environment"]["git"]["sha"]
    assert data["resolved"]["dtype"] == "float32" and data["resolved"]["attn_implementation"] == "sdpa"
    assert data["metrics"]["mme_local"]["mme_perception_score"]["value"] >= 0
    assert data["metrics"]["gqa_local"]["exact_match"]["stderr"] is not None
    eff = data["efficiency"]
    assert eff["n_samples"] == data["n_records"] == 2 * (len(LOCAL_TASKS) + 2)
    assert 0 < eff["tflops_analytic"] <= eff["tflops_dense_equivalent"]
    samples = (outcome.run_dir / "samples.jsonl").read_text().splitlines()
    assert len(samples) == data["n_samples"] > 0


def test_unknown_task_fails_non_zero(tmp_path):
    from modbench.suite.cli import main

    code = main(["run", "--model", "tiny-llava", "--tasks", "nope_local", "--output", str(tmp_path), "--run-id", "x"])
    assert code == 1
    data = json.loads((tmp_path / "x" / "run.json").read_text())
    assert data["status"] == "failed" and "unknown task" in data["errors"][0]


def test_missing_data_fails_with_a_clear_error(tmp_path, monkeypatch):

    monkeypatch.setattr(registry, "data_files_for", lambda task: [tmp_path / "absent.parquet"])
    outcome = run(RunSpec(model="tiny-llava", tasks=["gqa_local"], output=str(tmp_path)), progress=False)
    assert outcome.status == "failed" and "benchmark data missing" in outcome.errors[0]
    monkeypatch.setattr(registry, "DATA_DIR", tmp_path / "nowhere")
    outcome = run(RunSpec(model="tiny-llava", tasks=["gqa_local"], output=str(tmp_path)), progress=False)
    assert "modbench data fixtures" in outcome.errors[0]


def test_model_that_raises_fails_non_zero(tmp_path):
    outcome = run(RunSpec(model=str(tmp_path / "no-such-checkpoint"), tasks=["gqa_local"], output=str(tmp_path)),
                  progress=False)
    assert outcome.status == "failed"
    assert "neither a registered variant nor a checkpoint directory" in outcome.errors[0]
    assert json.loads((outcome.run_dir / "run.json").read_text())["status"] == "failed"


def _evaluate(instance, tasks):
    from lmms_eval.evaluator import simple_evaluate

    from modbench.tasks.registry import task_manager

    return simple_evaluate(model=instance, tasks=tasks, task_manager=task_manager(), log_samples=False,
                           verbosity="WARNING")["results"]


def _constant(answer):
    from modbench.models.lmms_plugin import ModbenchLmms

    instance = ModbenchLmms(pretrained="tiny-llava")
    original = instance.model.generate

    def generate(prompts, images, **kwargs):
        out = original(prompts, images, max_new_tokens=1, collect_stats=True)
        out["text"] = [answer] * len(prompts)
        return out

    instance.model.generate = generate
    return instance


def test_pope_and_mme_metrics_by_hand_for_a_constant_yes_model():
    import pandas as pd

    results = _evaluate(_constant("Yes"), ["pope_local", "mme_local"])
    f1s = []
    for split in ("adversarial", "popular", "random"):
        truth = pd.read_parquet(DATA_DIR / "pope" / f"{split}.parquet")["answer"]
        p = (truth == "yes").mean()  # always "yes": accuracy = precision = share of yes, recall = 1
        got = results[f"pope_local_{split}"]
        assert got["pope_accuracy,none"] == pytest.approx(p)
        assert got["pope_precision,none"] == pytest.approx(p)
        assert got["pope_recall,none"] == pytest.approx(1.0)
        f1s.append(2 * p / (p + 1))
        assert got["pope_f1_score,none"] == pytest.approx(f1s[-1])
    assert results["pope_local"]["pope_f1_score,none"] == pytest.approx(sum(f1s) / 3)
    # MME: every image has one Yes and one No question: acc 50 %, acc+ 0 -> 50 points per category
    assert results["mme_local"]["mme_perception_score,none"] == pytest.approx(4 * 50.0)
    assert results["mme_local"]["mme_cognition_score,none"] == pytest.approx(2 * 50.0)


def test_mmbench_circular_evaluation_by_hand_for_a_constant_a_model():
    import pandas as pd

    results = _evaluate(_constant("A"), ["mmbench_en_dev_local"])["mmbench_en_dev_local"]
    truth = pd.read_parquet(DATA_DIR / "mmbench" / "dev.parquet")
    assert results["mmbench_acc,none"] == pytest.approx((truth["answer"] == "A").mean())
    assert results["mmbench_circular_acc,none"] == 0.0  # rotated copies move the answer away from A


def test_mmbench_offline_answer_extraction():
    from modbench.tasks.mmbench.utils import extract_choice

    options = {"A": "circle", "B": "square", "C": "triangle"}
    assert extract_choice("B", options) == "B"
    assert extract_choice("(C) triangle", options) == "C"
    assert extract_choice("Answer: A", options) == "A"
    assert extract_choice("It is a square.", options) == "B"
    assert extract_choice("circle or square", options) is None  # ambiguous: no guess
    assert extract_choice("E", options) is None


def test_a_failed_sample_is_recorded_and_never_scored(tmp_path, monkeypatch):
    from modbench.models.lmms_plugin import ModbenchLmms, SampleFailures

    instance = ModbenchLmms(pretrained="tiny-llava", records=str(tmp_path / "r.jsonl"))
    original = instance.model.generate

    def generate(prompts, images, **kwargs):
        if any("triangle" in p for p in prompts):
            raise RuntimeError("boom")
        return original(prompts, images, **{**kwargs, "max_new_tokens": 1})

    instance.model.generate = generate
    with pytest.raises(SampleFailures, match="failed"):
        _evaluate(instance, ["pope_local_random"])
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["status"] == "failed"]
    assert failed and all("boom" in r["error"] for r in failed)
    assert any(r["status"] == "ok" for r in records)


def test_loglikelihood_equals_the_teacher_forced_log_probability():
    import torch
    from lmms_eval.api.instance import Instance

    from modbench.models.lmms_plugin import ModbenchLmms
    from modbench.models.routing import RESPONSE
    from modbench.tasks.fixtures import draw_shapes

    instance = ModbenchLmms(pretrained="tiny-llava-gmod")
    model = instance.model
    image = draw_shapes([("circle", "red")])
    instance.task_dict = {"t": {"test": [{"image": image}]}}
    context, continuation = "Is there a circle?", " yes it is"
    request = Instance(request_type="loglikelihood", idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                       arguments=(context, continuation, lambda doc: [doc["image"]], 0, "t", "test"))
    (logprob, greedy), = instance.loglikelihood([request])
    # independently: teacher-force the continuation tokens after the prompt
    from modbench.models.prompt import task_prompt

    batch = model.build_batch([task_prompt(context, True)], [image])
    ids = model.tokenizer(continuation, add_special_tokens=False).input_ids
    embeds = torch.cat([batch.inputs_embeds, model.language_model.model.embed_tokens(torch.tensor([ids]))], dim=1)
    types = torch.cat([batch.token_types, torch.full((1, len(ids)), RESPONSE)], dim=1)
    with torch.no_grad():
        logits = model.language_model(inputs_embeds=embeds, token_types=types).logits[0].float()
    start = batch.inputs_embeds.shape[1] - 1
    steps = logits[start:start + len(ids)].log_softmax(dim=-1)
    assert logprob == pytest.approx(float(steps[torch.arange(len(ids)), torch.tensor(ids)].sum()), rel=1e-5)
    assert greedy == bool((steps.argmax(dim=-1) == torch.tensor(ids)).all())


def test_multi_round_is_a_clear_error():
    from modbench.models.lmms_plugin import ModbenchLmms

    with pytest.raises(NotImplementedError, match="multi-round"):
        ModbenchLmms(pretrained="tiny-llava").generate_until_multi_round([])


def test_unknown_model_arg_is_an_error():
    from modbench.models.lmms_plugin import ModbenchLmms

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['temprature'\]"):
        ModbenchLmms(pretrained="tiny-llava", temprature=0)


def test_data_prepare_converts_a_downloaded_copy(tmp_path):
    import datasets
    import pandas as pd

    from modbench.suite.cli import main
    from modbench.tasks.fixtures import write_all

    write_all(tmp_path / "src", ["pope", "gqa"])
    # a hub-like copy: one DatasetDict saved to disk, splits named as the hub names them
    hub = datasets.DatasetDict({s: datasets.Dataset.from_parquet(str(tmp_path / "src" / "pope" / f"{s}.parquet"))
                                for s in ("adversarial", "popular", "random")})
    hub.save_to_disk(str(tmp_path / "hub_pope"))
    root = tmp_path / "root"
    assert main(["data", "prepare", "--task", "pope", "--from", str(tmp_path / "hub_pope"), "--root", str(root)]) == 0
    assert len(pd.read_parquet(root / "pope" / "random.parquet")) == 12
    # GQA questions without images: a clear error naming the column, then the join
    questions = datasets.Dataset.from_parquet(str(tmp_path / "src" / "gqa" / "testdev.parquet"))
    images = questions.select_columns(["imageId", "image"]).rename_column("imageId", "id")
    questions.remove_columns(["image"]).to_parquet(str(tmp_path / "testdev-00000-of-00001.parquet"))
    images.to_parquet(str(tmp_path / "images.parquet"))
    src = str(tmp_path / "testdev-00000-of-00001.parquet")
    assert main(["data", "prepare", "--task", "gqa", "--from", src, "--root", str(root)]) == 2
    assert main(["data", "prepare", "--task", "gqa", "--from", src, "--images", str(tmp_path / "images.parquet"),
                 "--root", str(root)]) == 0
    assert len(pd.read_parquet(root / "gqa" / "testdev.parquet")) == 16


def test_every_benchmark_fixture_passes_through_prepare(tmp_path):
    import pandas as pd

    from modbench.tasks.benchmarks import list_benchmarks
    from modbench.tasks.fixtures import write_all
    from modbench.tasks.prepare import prepare

    write_all(tmp_path / "src")
    for benchmark in [b.name for b in list_benchmarks()]:
        for path in prepare(benchmark, tmp_path / "src" / benchmark, tmp_path / "out"):
            assert 8 <= len(pd.read_parquet(path)) <= 32, path


def test_runs_measure_flops_per_sample(tmp_path):
    outcome = run(RunSpec(model="tiny-llava-gmod", tasks=["gqa_local"], limit=2, protocol="llava",
                          output=str(tmp_path), measure_flops=True), progress=False)
    assert outcome.status == "ok", outcome.errors
    records = [json.loads(line) for line in (outcome.run_dir / "records.jsonl").read_text().splitlines()]
    for record in records:
        flops = record["flops"]
        assert flops["tflops_llm_measured"] == pytest.approx(flops["tflops_llm_analytic"], rel=0.02)
        assert min(flops["tokens_per_layer"]) < max(flops["tokens_per_layer"])  # the routed path was counted
        # fvcore: one flop per multiply-add, and no formula for the attention kernel: below half the torch count
        assert 0 < 2 * flops["tflops_llm_fvcore"] < flops["tflops_llm_measured"]
    eff = json.loads((outcome.run_dir / "run.json").read_text())["efficiency"]
    assert eff["tflops_llm_measured_mean"] == pytest.approx(eff["tflops_llm_analytic_mean"], rel=0.02)


def test_max_new_tokens_caps_every_task_and_joins_the_record_identity():
    from modbench.models.lmms_plugin import ModbenchLmms

    plain = ModbenchLmms(pretrained="tiny-llava", protocol="llava")
    capped = ModbenchLmms(pretrained="tiny-llava", protocol="llava", max_new_tokens="8")
    assert plain._max_new_tokens("mmbench_en_dev_local", {}) == 1024  # the authors' MMBench script
    assert capped._max_new_tokens("mmbench_en_dev_local", {}) == 8
    assert capped._max_new_tokens("scienceqa_img_local", {}) == 1  # a cap never raises a benchmark's own
    assert ModbenchLmms(pretrained="tiny-llava", max_new_tokens=4)._max_new_tokens("pope_local_random",
                                                                                 {"max_new_tokens": 128}) == 4
    assert plain._identity != capped._identity  # a capped record never answers an uncapped run's request
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        ModbenchLmms(pretrained="tiny-llava", max_new_tokens=0)
