"""Results schema, the papers' tables, plots, the matrix and regression checks."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from modbench import models
from modbench.suite.check import compare, recompute_metrics, report, run_checks, update_baseline
from modbench.suite.cli import main
from modbench.suite.results import SchemaError, load_results, validate_results
from modbench.suite.runner import RunSpec, run

CHECKOUT = Path(__file__).resolve().parent.parent

FOUR = ["gqa_local", "scienceqa_img_local", "mmmu_val_local", "textvqa_val_ocr_local"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    from modbench.tasks.fixtures import write_all
    from modbench.tasks.registry import DATA_DIR, check_data

    try:
        check_data(FOUR)
    except FileNotFoundError:
        write_all(DATA_DIR)
    out = tmp_path_factory.mktemp("runs")
    outcome = run(RunSpec(model="tiny-llava-hr-gmod", tasks=FOUR, limit=2, protocol="llava", output=str(out),
                          run_id="hr-gmod"), progress=False)
    assert outcome.status == "ok", outcome.errors
    return out


def test_every_file_the_suite_writes_validates(runs_dir, tmp_path):
    load_results(runs_dir / "hr-gmod" / "run.json")
    assert main(["smoke", "--models", "tiny-llava", "--output", str(tmp_path / "smoke.json")]) == 0
    load_results(tmp_path / "smoke.json")
    assert main(["latency", "--model", "tiny-llava", "--image-tokens", "8", "--prompt-tokens", "4", "--new-tokens",
                 "2", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--output", str(tmp_path / "lat.json")]) == 0
    load_results(tmp_path / "lat.json")
    update_baseline(runs_dir, tmp_path / "base.json")
    load_results(tmp_path / "base.json")


def test_loader_refuses_another_major_and_missing_fields(runs_dir):
    data = json.loads((runs_dir / "hr-gmod" / "run.json").read_text())
    with pytest.raises(SchemaError, match="schema_version 2.0"):
        validate_results({**data, "schema_version": "2.0"})
    broken = {k: v for k, v in data.items() if k != "metrics"}
    with pytest.raises(SchemaError, match=r"missing \['metrics'\]"):
        validate_results(broken)
    env = {k: v for k, v in data["environment"].items() if k != "torch"}
    with pytest.raises(SchemaError, match="environment lacks"):
        validate_results({**data, "environment": env})


def test_the_environment_names_the_cpu_beyond_its_model_name(runs_dir):
    """'AMD EPYC' is several generations on a virtual machine: the record also keeps vendor, family, model and the
    vector extensions, which a reproduction's pinned cpu_capability hides."""
    from modbench.suite.results import cpu_id

    zen4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
            "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16\n\nprocessor\t: 1\nvendor_id\t: Other\n")
    assert cpu_id(zen4) == "AuthenticAMD family 25 model 17 (avx2 avx512f avx512_bf16)"
    assert cpu_id("vendor_id : GenuineIntel\ncpu family : 6\nmodel : 85\nflags : sse2\n") == \
        "GenuineIntel family 6 model 85"
    assert cpu_id("") == ""
    assert cpu_id("\n" + zen4) == cpu_id(zen4)  # blank lines before the first processor's block
    env = json.loads((runs_dir / "hr-gmod" / "run.json").read_text())["environment"]
    assert env["cpu_id"] == cpu_id()


def test_the_dirty_flag_ignores_the_suites_own_output_folders(tmp_path):
    """A reproduction writes its records into results/reproduction/<preset> of the checkout: its report step must
    not call the code dirty for that. A change to code, or to results/paper (an input), is dirty."""
    import subprocess

    from modbench.suite.results import OUTPUT_FOLDERS, git_state

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    files = ["suite/code.py", "results/paper/table.csv", *(f"{folder}/a.json" for folder in OUTPUT_FOLDERS)]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    assert git_state(tmp_path / "suite")["dirty"] is False
    for folder in OUTPUT_FOLDERS:
        (tmp_path / folder / "a.json").write_text("1")
    assert git_state(tmp_path / "suite")["dirty"] is False  # run from a subfolder, as code_dir() is
    for name in ("suite/code.py", "results/paper/table.csv"):
        (tmp_path / name).write_text("1")
        assert git_state(tmp_path / "suite")["dirty"] is True, name
        (tmp_path / name).write_text("0")


def test_aggregates_recompute_from_samples(runs_dir):
    data = load_results(runs_dir / "hr-gmod" / "run.json")
    recomputed = recompute_metrics(runs_dir / "hr-gmod")
    assert set(recomputed) == set(FOUR)
    for task, metrics in recomputed.items():
        for name, value in metrics.items():
            assert value == pytest.approx(data["metrics"][task][name]["value"]), (task, name)


def test_efficiency_skips_and_saves_flops(runs_dir):
    eff = load_results(runs_dir / "hr-gmod" / "run.json")["efficiency"]
    assert 0.2 < eff["overall_skip"] < 0.8  # tiny twins skip about half of the prompt tokens
    assert eff["tflops_analytic"] < eff["tflops_dense_equivalent"]
    assert set(eff["per_task"]) == set(FOUR)


def test_unchanged_run_passes_and_another_skip_threshold_is_caught(runs_dir, tmp_path, monkeypatch):
    baseline = tmp_path / "base.json"
    update_baseline(runs_dir, baseline)
    text, ok = report(run_checks(runs_dir, baseline))
    assert ok, text
    # the same cell of the matrix, run with a deliberate change: another prefill threshold
    cfg = models.get_variant("tiny-llava-hr-gmod")
    changed = dataclasses.replace(cfg, name="tiny-llava-hr-gmod-thr", mod=dataclasses.replace(cfg.mod, prefill_threshold=0.3))
    monkeypatch.setitem(models.variants._VARIANTS, changed.name, models.variants.VariantEntry(changed))  # registered for this test only
    other = tmp_path / "other"
    outcome = run(RunSpec(model=changed.name, tasks=FOUR, limit=2, protocol="llava", output=str(other),
                          run_id="hr-gmod"), progress=False)
    assert outcome.status == "ok"
    findings = run_checks(other, baseline)
    text, ok = report(findings)
    assert not ok
    # a metric that moved but stayed within its tolerance passes, and the report still names it
    from modbench.suite.check import Finding, moved

    passed = next(f for f in findings if f.status == "pass" and f.check.direction == "higher")
    nudged = Finding(passed.check, float(passed.check.value) + passed.check.tolerance / 2, "pass", "")
    assert moved(nudged) and not moved(Finding(passed.check, passed.check.value, "pass", ""))
    nudged_text, nudged_ok = report([nudged])
    assert nudged_ok and nudged_text.startswith("MOVED") and "1 of the passed moved" in nudged_text
    failed = {f.check.metric for f in findings if f.status == "fail"}
    assert "efficiency.overall_skip" in failed and "efficiency.tflops_analytic" in failed
    assert main(["check", "--runs", str(other), "--baseline", str(baseline)]) == 1
    assert main(["check", "--runs", str(runs_dir), "--baseline", str(baseline)]) == 0


def test_a_missing_metric_fails(runs_dir, tmp_path):
    baseline = tmp_path / "base.json"
    update_baseline(runs_dir, baseline)
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    path = copy / "hr-gmod" / "run.json"
    data = json.loads(path.read_text())
    del data["metrics"]["gqa_local"]
    path.write_text(json.dumps(data))
    findings = run_checks(copy, baseline)
    assert any(f.status == "fail" and f.reason == "metric missing from the run" for f in findings)


def test_latency_is_compared_only_on_matching_hardware():
    from modbench.suite.check import Check

    check = Check("r", "x", 1.0, "lower_noisy", 0.2, device_name="gpu-a")
    assert compare(check, 5.0, "gpu-b").status == "skipped"
    assert compare(check, 1.1, "gpu-a").status == "pass"
    assert compare(check, 1.5, "gpu-a").status == "fail"
    assert compare(Check("r", "x", 0.5, "higher", 0.02), 0.47, "").status == "fail"
    assert compare(Check("r", "x", 0.5, "higher", 0.02), 0.49, "").status == "pass"
    assert compare(Check("r", "x", 1.0, "lower", 1e-9), 1.0000001, "").status == "fail"


def test_matrix_runs_only_what_is_missing(tmp_path, capsys):
    from modbench.suite.matrix import expand, load_matrix

    matrix = tmp_path / "matrix.yaml"
    matrix.write_text("slices:\n  s:\n    variants: [tiny-llava]\n    tasks: [gqa_local]\n    protocol: [llava]\n"
                      "    dtype: [float32]\n    batch_size: [2]\n    limit: 1\n")
    assert len(expand(load_matrix(matrix)["s"], str(tmp_path))) == 1
    args = ["matrix", "--matrix", str(matrix), "--slice", "s", "--output", str(tmp_path / "runs"),
            "--tables", str(tmp_path / "tables"), "--no-plots"]
    assert main(args) == 0
    assert "1 runs, 0 already finished" in capsys.readouterr().out
    assert main(args) == 0
    assert "1 runs, 1 already finished" in capsys.readouterr().out
    assert (tmp_path / "tables" / "gamma_mod_table6.md").exists()


def test_matrix_yaml_is_typed():
    from modbench.suite.matrix import load_matrix

    slices = load_matrix(CHECKOUT / "matrix.yaml")
    assert {"bench", "bench-gmod", "bench-pmod", "bench-full"} <= set(slices)
    tiny = {c.name for c in models.list_variants() if c.tiny}
    assert set(slices["bench"].variants) == tiny  # every tiny family
    from modbench.models.config import ConfigError

    bad = dataclasses.asdict(slices["bench"]) | {"dtypes": ["float16"]}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['dtypes'\]"):
        from modbench.models.config import from_dict
        from modbench.suite.matrix import MatrixSlice

        from_dict(MatrixSlice, bad, "slices.bench")


def test_noise_tolerance_covers_a_retraining_and_still_catches_a_drop(runs_dir, tmp_path):
    from modbench.suite.check import accuracy_tolerance, checks_for_run, is_accuracy

    z = 3 * 2 ** 0.5  # three standard errors of the difference of two independent evaluations
    assert accuracy_tolerance(0.5, "exact_match", 60, "noise") == pytest.approx(z * (0.25 / 60) ** 0.5)
    assert accuracy_tolerance(0.5, "exact_match", 100_000, "noise") == 0.02  # never tighter than the fixed one
    assert accuracy_tolerance(400.0, "mme_perception_score", 100, "noise") == pytest.approx(z * 40.0)
    assert [is_accuracy(n) for n in ("pope_accuracy", "mmbench_circular_acc", "mme_perception_score", "exact_match",
                                     "pope_yes_ratio", "pope_f1_score", "pope_precision")] == [True] * 4 + [False] * 3
    with pytest.raises(ValueError, match="sample count"):
        accuracy_tolerance(0.5, "exact_match", 0, "noise")
    run = json.loads((runs_dir / "hr-gmod" / "run.json").read_text())
    fixed = {c.metric: c.tolerance for c in checks_for_run("r", run, "fixed")}
    noise = {c.metric: c.tolerance for c in checks_for_run("r", run, "noise")}
    assert set(noise) <= set(fixed) and all(noise[m] >= fixed[m] for m in noise) and any(noise[m] > fixed[m] for m in noise)
    baseline = tmp_path / "base.json"
    update_baseline(runs_dir, baseline, policy="noise")
    assert json.loads(baseline.read_text())["provenance"]["tolerance_policy"] == "noise"
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    path = copy / "hr-gmod" / "run.json"
    data = json.loads(path.read_text())
    task = next(iter(data["metrics"]))
    metric = next(m for m in data["metrics"][task] if is_accuracy(m))
    data["metrics"][task][metric]["value"] -= 1.0 if not metric.startswith("mme_") else 1000.0
    path.write_text(json.dumps(data))
    failed = {f.check.metric: f.reason for f in run_checks(copy, baseline) if f.status == "fail"}
    assert f"metrics.{task}.{metric}.value" in failed
    assert "other numerics" not in failed[f"metrics.{task}.{metric}.value"]
    # the baseline keeps what decided its runs' floats; a failure computed with others says so
    assert json.loads(baseline.read_text())["provenance"]["runs_numerics"]["cpu"] == data["environment"]["cpu"]
    data["environment"]["cpu"] = "Another CPU"
    path.write_text(json.dumps(data))
    reasons = [f.reason for f in run_checks(copy, baseline) if f.status == "fail"]
    assert reasons and all("other numerics than the baseline's runs: cpu 'Another CPU'" in r for r in reasons)
    # another generation under the same model name: cpu_id tells them apart, where the baseline recorded one
    data["environment"] |= {"cpu": json.loads(baseline.read_text())["provenance"]["runs_numerics"]["cpu"],
                            "cpu_id": "AuthenticAMD family 23 model 1 (avx2)"}
    path.write_text(json.dumps(data))
    reasons = [f.reason for f in run_checks(copy, baseline) if f.status == "fail"]
    assert reasons and all("numerics than the baseline's runs: cpu_id 'AuthenticAMD family 23" in r for r in reasons)
    older = json.loads(baseline.read_text())
    del older["provenance"]["runs_numerics"]["cpu_id"]  # a baseline written before cpu_id was recorded
    baseline.write_text(json.dumps(older))
    reasons = [f.reason for f in run_checks(copy, baseline) if f.status == "fail"]
    assert reasons and not any("other numerics" in r for r in reasons)
