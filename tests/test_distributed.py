"""Data parallelism inside a cell, on a CPU with gloo: `modbench train` under `accelerate launch` (two processes
equal one process on the same global batch) and a matrix cell evaluated by two torchrun processes (equal to
one process, and resumable per rank). Every subprocess runs with OMP_NUM_THREADS=1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TASK = "pope_local_random"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_two_process_training_equals_one_process_on_the_same_global_batch(tmp_path):
    """γ-MoD (LM + routing loss) from tiny-llava, 3 steps of a global batch of 4: one process with batch 4 against
    `accelerate launch` with two processes of 2 each (DDP over gloo). Both losses are token means and the two
    halves hold different token counts, so each rank's loss is weighted by its share of the global count;
    without that weighting the weights differ by ~4e-3 here. What remains is float summation order (each rank
    sums its half, then the all-reduce adds the halves), which Adam's normalisation carries into the weights
    at ~1e-6: hence allclose, not equal."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_train import write_data

    from modbench.suite.train import TrainConfig, train

    data = write_data(tmp_path / "data")
    common = ["--model", "tiny-llava", "--data", str(data), "--steps", "3", "--lr", "1e-3", "--scheme", "gamma",
              "--mod-layers", "1-4", "--device", "cpu", "--no-progress"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(_free_port()), "-m", "modbench", "train", *common, "--batch-size", "2", "--save-every", "2", "--output",
              str(tmp_path / "two")]
    done = subprocess.run(launch, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(TrainConfig(model="tiny-llava", data=str(data), steps=3, lr=1e-3, scheme="gamma", mod_layers="1-4",
                            device="cpu", progress=False, batch_size=4, output=str(tmp_path / "one")))
    two = json.loads((tmp_path / "two" / "train.json").read_text())
    assert (two["processes"], two["global_batch"], one["processes"], one["global_batch"]) == (2, 4, 1, 4)
    assert two["samples_seen"] == one["samples_seen"] == 12 and two["tokens_seen"] == one["tokens_seen"]
    assert two["final"]["lm_loss"] == pytest.approx(one["final"]["lm_loss"], rel=1e-6)
    assert two["final"]["routing_loss"] == pytest.approx(one["final"]["routing_loss"], rel=1e-5)
    checkpoint = tmp_path / "two" / "checkpoints" / "step-00000003"  # every rank's RNG state, in one folder
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert not list((tmp_path / "two" / "checkpoints").glob(".*tmp*"))
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=2e-5, msg=key)


def test_a_data_parallel_cell_equals_one_process_and_resumes_per_rank(tmp_path, monkeypatch):
    """`modbench matrix --processes 2` runs the cell as `torchrun --nproc_per_node 2 -m modbench run ...`: lmms-eval
    shards the requests, rank 0 merges the ranks' records and writes run.json. Metrics and samples equal a
    one-process run; after a kill (run.json gone, rank 1's records lost) the cell resumes from rank 0's records."""
    from modbench.suite.cli import main
    from modbench.suite.runner import RunSpec, run
    from modbench.tasks.fixtures import write_all

    root = tmp_path / "data"
    write_all(root, ["pope"])
    (tmp_path / "matrix.yaml").write_text(
        f"slices:\n  t:\n    variants: [tiny-llava-gmod]\n    tasks: [{TASK}]\n    protocol: [llava]\n"
        "    batch_size: [2]\n    limit: 5\n")
    argv = ["matrix", "--slice", "t", "--matrix", str(tmp_path / "matrix.yaml"), "--output", str(tmp_path / "runs"),
            "--tables", str(tmp_path / "tables"), "--data-root", str(root), "--no-plots", "--processes", "2",
            "--gpus", "0"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    logs = lambda: "".join(p.read_text()[-3000:] for p in (tmp_path / "runs" / ".launcher").glob("t/*.log"))  # noqa: E731
    assert main(argv) == 0, logs()
    (cell,) = (tmp_path / "runs").glob("tiny-llava-gmod__*")
    parallel = json.loads((cell / "run.json").read_text())
    assert parallel["status"] == "ok" and parallel["processes"] == 2 and parallel["n_records"] == 5
    single = run(RunSpec(model="tiny-llava-gmod", tasks=[TASK], limit=5, protocol="llava", batch_size=2,
                         output=str(tmp_path / "single"), run_id="r", data_root=str(root)), progress=False)
    reference = json.loads((single.run_dir / "run.json").read_text())
    assert parallel["metrics"] == reference["metrics"]
    answers = lambda folder: sorted((r["doc_id"], r["answer"]) for r in map(  # noqa: E731
        json.loads, (folder / "records.jsonl").read_text().splitlines()))
    assert answers(cell) == answers(single.run_dir)
    assert parallel["efficiency"]["overall_skip"] == pytest.approx(reference["efficiency"]["overall_skip"])
    kept = len((cell / "records.jsonl.rank0").read_text().splitlines())
    (cell / "run.json").unlink()  # as a kill leaves the folder
    (cell / "records.jsonl.rank1").write_text("")
    assert main(argv) == 0, logs()
    resumed = json.loads((cell / "run.json").read_text())
    assert resumed["status"] == "ok" and resumed["resumed_samples"] == kept
    assert resumed["metrics"] == reference["metrics"] and answers(cell) == answers(single.run_dir)


def test_accelerate_configs_for_ddp_and_deepspeed_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    stages = {}
    for name in ("ddp", "zero2", "zero3"):
        cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
        stages[name] = (str(cfg.distributed_type), cfg.deepspeed_config.get("zero_stage"))
    assert stages == {"ddp": ("DistributedType.MULTI_GPU", None), "zero2": ("DistributedType.DEEPSPEED", 2),
                      "zero3": ("DistributedType.DEEPSPEED", 3)}
