"""Bad inputs and interruptions, as a new user meets them.

One table: bad input -> a fragment the message must hold -> exit code. Then the resume tests: a run killed
(SIGTERM, SIGKILL) mid-way and resumed recomputes no finished sample and ends as an uninterrupted run did.
Every run is tiny-llava on one small task with a small --limit, on a data root of its own (only the fixtures
the rows need), so the checkout's tasks/data is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
TASK = "pope_local_random"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from modbench.tasks.fixtures import write_all

    root = tmp_path_factory.mktemp("data")
    write_all(root, ["pope", "gqa"])
    return root


# ---------------------------------------------------------------------------------------------------------
# Inputs the table's rows build (each returns the argv after `modbench`)


def _checkpoint(tmp: Path, variant: str, kind: str, pattern: str, value: float, where=None) -> Path:
    """A released-layout checkpoint of `variant` whose weights named by `pattern` (fnmatch, authors' names) hold
    `value`: all of each, or the one element `where`. Edited in the file, as a broken release would hold it."""
    import fnmatch

    import torch

    from modbench import models
    from modbench.models.checkpoints import save_authors_checkpoint

    directory = save_authors_checkpoint(models.build_model(variant), tmp / "ckpt", kind)
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    keys = fnmatch.filter(state, pattern)
    assert keys, pattern
    for key in keys:
        if where is None:
            state[key].fill_(value)
        else:
            state[key][where] = value
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def _run(model: str, tmp: Path, root: Path, task: str = TASK) -> list[str]:
    return ["run", "--model", model, "--tasks", task, "--limit", "2", "--protocol", "llava",
            "--output", str(tmp / "runs"), "--run-id", "r", "--data-root", str(root)]


def _pope_copy(tmp: Path, root: Path, corrupt_row: int) -> Path:
    """POPE as the hub holds it (a saved DatasetDict) with one image's bytes broken."""
    import datasets

    splits = {s: datasets.Dataset.from_parquet(str(root / "pope" / f"{s}.parquet"))
              for s in ("adversarial", "popular", "random")}
    raw = splits["random"].cast_column("image", datasets.Image(decode=False))
    raw = raw.map(lambda row, i: {"image": {"bytes": b"not an image", "path": None} if i == corrupt_row
                                  else row["image"]}, with_indices=True)
    splits["random"] = raw.cast_column("image", datasets.Image())
    datasets.DatasetDict(splits).save_to_disk(str(tmp / "hub_pope"))
    return tmp / "hub_pope"


def _gqa_without_images(tmp: Path, root: Path) -> Path:
    import datasets

    copy = datasets.Dataset.from_parquet(str(root / "gqa" / "testdev.parquet")).remove_columns(["image"])
    copy.to_parquet(str(tmp / "testdev-00000-of-00001.parquet"))
    return tmp / "testdev-00000-of-00001.parquet"


def _prepare(task: str, source: Path, tmp: Path) -> list[str]:
    return ["data", "prepare", "--task", task, "--from", str(source), "--root", str(tmp / "out")]


def _matrix(tmp: Path, root: Path) -> list[str]:
    (tmp / "matrix.yaml").write_text(
        "slices:\n  t:\n    variants: [tiny-lava, tiny-llava, tiny-lava-gmod]\n"
        f"    tasks: [{TASK}]\n    batch_size: [2]\n    limit: 2\n")
    return ["matrix", "--slice", "t", "--matrix", str(tmp / "matrix.yaml"), "--output", str(tmp / "runs"),
            "--tables", str(tmp / "tables"), "--data-root", str(root), "--no-plots"]


def _run_failed(tmp: Path, printed: str) -> None:
    assert json.loads((tmp / "runs" / "r" / "run.json").read_text())["status"] == "failed"


def _samples_failed_not_scored(tmp: Path, printed: str) -> None:
    """Each sample recorded as failed with the reason; no metric computed from them."""
    run = json.loads((tmp / "runs" / "r" / "run.json").read_text())
    assert run["status"] == "failed" and not run["metrics"]
    records = [json.loads(line) for line in (tmp / "runs" / "r" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["status"] == "failed" and "non-finite" in r["error"] for r in records)


def _refused_before_any_cell_ran(tmp: Path, printed: str) -> None:
    """Both misspelt variants are named when matrix.yaml loads, and no cell runs (not even the good one)."""
    assert "'tiny-lava' is neither a registered variant" in printed
    assert not list((tmp / "runs").glob("*/run.json"))


@dataclass(frozen=True)
class BadInput:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (tmp_path, data root) -> argv after `modbench`
    fragment: str  # must appear in what the command prints
    exit_code: int
    check: Callable[[Path, str], None] | None = None  # (tmp_path, printed): what else must hold


BAD_INPUTS = [
    # 4. names
    BadInput("misspelt model", lambda t, r: _run("tiny-lava", t, r),
             "'tiny-lava' is neither a registered variant nor a checkpoint directory; did you mean tiny-llava", 1,
             _run_failed),
    BadInput("misspelt task", lambda t, r: _run("tiny-llava", t, r, "pope_lcal"),
             "'pope_lcal' (did you mean pope_local", 1, _run_failed),
    BadInput("built-in task name", lambda t, r: _run("tiny-llava", t, r, "gqa"), "'gqa' (did you mean gqa_local", 1),
    # 2. non-finite weights at load, named by key
    BadInput("NaN in an MLP weight",
             lambda t, r: _run(str(_checkpoint(t, "tiny-llava", "llava", "model.layers.1.mlp.up_proj.weight",
                                               float("nan"), (0, 0))), t, r),
             "weight model.layers.1.mlp.up_proj.weight holds non-finite values (1 NaN, 0 inf", 1, _run_failed),
    BadInput("NaN γ-MoD router",
             lambda t, r: _run(str(_checkpoint(t, "tiny-llava-gmod", "mod_llava_llama",
                                               "model.layers.*.router.weight", float("nan"))), t, r),
             "weight model.layers.1.router.weight holds non-finite values", 1),
    # 2. non-finite numbers at run time (finite weights that overflow): the samples fail, never scored
    BadInput("logits overflow",
             lambda t, r: _run(str(_checkpoint(t, "tiny-llava", "llava", "model.layers.1.input_layernorm.weight",
                                               3e38)), t, r),
             "non-finite logits (NaN/inf) at generation step 0", 1, _samples_failed_not_scored),
    BadInput("router overflow, logits finite",  # a NaN router skips every token and still answers
             lambda t, r: _run(str(_checkpoint(t, "tiny-llava-gmod", "mod_llava_llama",
                                               "model.layers.1.input_layernorm.weight", 3e38)), t, r),
             "non-finite router probabilities (NaN/inf) at layer 1", 1, _samples_failed_not_scored),
    # 5. prepare
    BadInput("another benchmark's copy", lambda t, r: _prepare("pope", r / "gqa", t),
             "expected split 'adversarial' (or one split with a 'category' column) with columns ['question_id', "
             "'question', 'answer', 'image', 'category']; found split 'testdev' with columns ['id', 'imageId'", 2),
    BadInput("a missing column", lambda t, r: _prepare("gqa", _gqa_without_images(t, r), t),
             "missing column(s) ['image']: expected columns ['id', 'imageId', 'question', 'answer', 'image'], "
             "found ['id', 'imageId'", 2),
    BadInput("a corrupt image", lambda t, r: _prepare("pope", _pope_copy(t, r, corrupt_row=3), t),
             "[random] row 3 (question_id='random-3'): column 'image' holds a corrupt image", 2),
    # 6. a matrix slice is checked against the registries when it loads (tests/test_launcher.py: the matrix goes
    # on after a failed cell and lists every one)
    BadInput("matrix with two misspelt variants", _matrix,
             "'tiny-lava-gmod' is neither a registered variant nor a checkpoint directory; did you mean "
             "tiny-llava-gmod", 2, _refused_before_any_cell_ran),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.name for c in BAD_INPUTS])
def test_bad_input(case: BadInput, tmp_path, data_root, capsys):
    from modbench.suite.cli import main

    code = main(case.argv(tmp_path, data_root))
    out = capsys.readouterr()
    printed = out.out + out.err
    assert case.fragment in printed, printed[-3000:]
    assert code == case.exit_code, printed[-3000:]
    if case.check is not None:
        case.check(tmp_path, printed)


def test_weights_that_overflow_the_dtype_are_named(tmp_path):
    from modbench.models.checkpoints import CheckpointError, load

    ckpt = _checkpoint(tmp_path, "tiny-llava", "llava", "model.layers.1.mlp.up_proj.weight", 1e6, (0, 0))
    with pytest.raises(CheckpointError, match=r"weight language_model\.model\.layers\.1\.mlp\.up_proj\.weight holds "
                                              r"non-finite values after the cast to float16"):
        load(str(ckpt), dtype="float16")


# ---------------------------------------------------------------------------------------------------------
# 1. sample-level resume

LIMIT = 6  # pope_local_random, lmms-eval protocol: 128 new tokens per sample, so a kill lands mid-run


def _spec_args(root: Path) -> list[str]:
    return ["--tasks", TASK, "--limit", str(LIMIT), "--data-root", str(root)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
    from modbench.suite.runner import RunSpec, run

    spec = RunSpec(model="tiny-llava", tasks=[TASK], limit=LIMIT, dtype="float32",
                   output=str(tmp_path_factory.mktemp("reference")), data_root=str(data_root))
    outcome = run(spec, progress=False)
    assert outcome.status == "ok", outcome.errors
    return {**_results(outcome.run_dir), "spec": spec, "run_dir": outcome.run_dir}


def _results(run_dir: Path) -> dict:
    data = json.loads((run_dir / "run.json").read_text())
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    return {"metrics": data["metrics"], "run": data,
            "samples": [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()],
            "answers": sorted((r["doc_id"], r["answer"]) for r in records), "keys": [r.get("key") for r in records]}


def _kill_mid_run(argv: list[str], records: Path, sig: int) -> tuple[int, int]:
    """Start `modbench argv` in a fresh process; once two samples are recorded, send `sig`. (exit code, records)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "modbench", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if records.exists() and len(records.read_text().splitlines()) >= 2:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=120)
    done = len(records.read_text().splitlines()) if records.exists() else 0
    assert 2 <= done < LIMIT, f"not killed mid-run ({done} records):\n{output[-3000:]}"
    return proc.returncode, done


def _count_model_calls(monkeypatch) -> list[int]:
    from modbench.models.vlm import ModVlm

    calls: list[int] = []
    original = ModVlm.generate

    def counted(self, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(ModVlm, "generate", counted)
    return calls


def _assert_same_as_uninterrupted(resumed: dict, reference: dict) -> None:
    assert resumed["samples"] == reference["samples"]
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["answers"] == reference["answers"]
    assert len(set(resumed["keys"])) == LIMIT  # every sample recorded once
    assert resumed["run"]["efficiency"]["tflops_analytic"] == reference["run"]["efficiency"]["tflops_analytic"]


def test_run_resumes_after_sigterm(tmp_path, data_root, uninterrupted, monkeypatch, capsys):
    from modbench.suite.cli import main

    argv = ["run", "--model", "tiny-llava", *_spec_args(data_root), "--output", str(tmp_path), "--run-id", "r"]
    code, done = _kill_mid_run(argv, tmp_path / "r" / "records.jsonl", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    interrupted = json.loads((tmp_path / "r" / "run.json").read_text())
    assert interrupted["status"] == "interrupted" and "SIGTERM" in interrupted["errors"][0]
    calls = _count_model_calls(monkeypatch)
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    assert sum(calls) == LIMIT - done  # no finished sample recomputed
    resumed = _results(tmp_path / "r")
    assert resumed["run"]["resumed_samples"] == done
    _assert_same_as_uninterrupted(resumed, uninterrupted)


def test_matrix_cell_resumes_after_sigkill(tmp_path, data_root, uninterrupted, monkeypatch, capsys):
    from modbench.suite.cli import main
    from modbench.suite.matrix import expand, load_matrix

    (tmp_path / "matrix.yaml").write_text(
        f"slices:\n  t:\n    variants: [tiny-llava]\n    tasks: [{TASK}]\n    protocol: [lmms-eval]\n"
        f"    limit: {LIMIT}\n")
    argv = ["matrix", "--slice", "t", "--matrix", str(tmp_path / "matrix.yaml"), "--output", str(tmp_path / "runs"),
            "--tables", str(tmp_path / "tables"), "--data-root", str(data_root), "--no-plots"]
    cell = expand(load_matrix(tmp_path / "matrix.yaml")["t"], str(tmp_path / "runs"))[0]
    code, done = _kill_mid_run(argv, tmp_path / "runs" / cell.run_id / "records.jsonl", signal.SIGKILL)
    assert code == -signal.SIGKILL
    calls = _count_model_calls(monkeypatch)
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    assert sum(calls) == LIMIT - done
    _assert_same_as_uninterrupted(_results(tmp_path / "runs" / cell.run_id), uninterrupted)


def test_a_torn_last_record_and_failed_samples_run_again(tmp_path, data_root, uninterrupted, monkeypatch):
    """A kill mid-write leaves half a line; a failed sample is not finished: both run again, nothing else."""
    import shutil

    from modbench.suite.runner import run

    shutil.copytree(uninterrupted["run_dir"], tmp_path / "r")  # the fingerprint leaves out where a run is written
    records = tmp_path / "r" / "records.jsonl"
    rows = records.read_text().splitlines()
    failed = {**json.loads(rows[1]), "status": "failed", "error": "RuntimeError: boom"}
    records.write_text("\n".join([rows[0], json.dumps(failed)] + rows[2:5]) + "\n" + rows[5][:40])
    (tmp_path / "r" / "run.json").unlink()  # as a kill leaves it
    calls = _count_model_calls(monkeypatch)
    outcome = run(replace(uninterrupted["spec"], output=str(tmp_path), run_id="r"), progress=False)
    assert outcome.status == "ok" and outcome.resumed_samples == 4
    assert sum(calls) == 2
    _assert_same_as_uninterrupted(_results(tmp_path / "r"), uninterrupted)


def test_a_different_spec_or_a_finished_run_starts_over(tmp_path, data_root, monkeypatch):
    from modbench.suite.runner import RunSpec, run

    spec = RunSpec(model="tiny-llava", tasks=[TASK], limit=2, protocol="llava", output=str(tmp_path), run_id="r",
                   data_root=str(data_root))
    assert run(spec, progress=False).status == "ok"
    calls = _count_model_calls(monkeypatch)
    assert run(spec, progress=False).resumed_samples == 0 and sum(calls) == 2  # finished: run again in full
    (tmp_path / "r" / "run.json").unlink()
    spec.seed = 1  # other weights: the records of seed 0 must not answer
    assert run(spec, progress=False).resumed_samples == 0 and sum(calls) == 4
