"""`modbench matrix` beyond one process: the typed launcher section, the sbatch script (--dry-run), SLURM job
arrays through submitit's own executors (debug: in this process; local: real processes, pre-empted by the
signal SLURM sends), --detach / --status / --collect, parallel local cells, resubmission that resumes."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from modbench.suite.cli import main

CHECKOUT = Path(__file__).resolve().parent.parent

TASK = "pope_local_random"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from modbench.tasks.fixtures import write_all

    root = tmp_path_factory.mktemp("data")
    write_all(root, ["pope"])
    return root


def _matrix(tmp: Path, variants: list[str], launcher: str = "", limit: int = 3, protocol: str = "llava") -> Path:
    path = tmp / "matrix.yaml"
    path.write_text(f"slices:\n  t:\n    variants: [{', '.join(variants)}]\n    tasks: [{TASK}]\n"
                    f"    protocol: [{protocol}]\n    batch_size: [1]\n    limit: {limit}\n" + launcher)
    return path


def _argv(tmp: Path, matrix: Path, data_root: Path, *extra: str) -> list[str]:
    return ["matrix", "--slice", "t", "--matrix", str(matrix), "--output", str(tmp / "runs"), "--tables",
            str(tmp / "tables"), "--data-root", str(data_root), "--no-plots", *extra]


def _run_json(tmp: Path, variant: str) -> dict:
    (path,) = (tmp / "runs").glob(f"{variant}__*/run.json")
    return json.loads(path.read_text())


def test_launcher_section_is_typed_and_flags_override_it(tmp_path):
    from modbench.models.config import ConfigError
    from modbench.suite.launcher import with_overrides
    from modbench.suite.matrix import load_matrix, load_matrix_file

    repo = load_matrix_file(CHECKOUT / "matrix.yaml")
    assert repo.launcher.kind == "local" and repo.launcher.partition and repo.launcher.time_min > 0
    assert set(load_matrix(CHECKOUT / "matrix.yaml")) == set(repo.slices)
    cfg = with_overrides(repo.launcher, {"partition": "a100", "gpus": 4, "jobs": None})
    assert (cfg.partition, cfg.gpus, cfg.jobs, cfg.processes_per_cell()) == ("a100", 4, repo.launcher.jobs, 4)
    with pytest.raises(ConfigError, match="processes"):
        with_overrides(repo.launcher, {"gpus": 1, "processes": 2})  # one process per GPU at most
    with pytest.raises(ConfigError, match="kind"):
        with_overrides(repo.launcher, {"kind": "pbs"})
    bad = _matrix(tmp_path, ["tiny-llava"], "launcher:\n  partion: gpu\n")
    with pytest.raises(ConfigError, match=r"launcher: unknown key\(s\) \['partion'\]"):
        load_matrix_file(bad)
    bad.write_text(bad.read_text().replace("launcher:\n  partion: gpu\n", "launchers: {}\n"))
    with pytest.raises(ValueError, match="top level"):
        load_matrix_file(bad)


def test_dry_run_prints_the_sbatch_script_and_runs_nothing(tmp_path, data_root, capsys):
    launcher = ("launcher:\n  kind: slurm\n  partition: gpu\n  gpus: 2\n  cpus: 6\n  mem_gb: 48\n  time_min: 30\n"
                "  array_parallelism: 2\n  account: proj\n  setup: [module load cuda]\n")
    matrix = _matrix(tmp_path, ["tiny-llava", "tiny-llava-gmod", "tiny-llava-pmod"], launcher)
    assert main(_argv(tmp_path, matrix, data_root, "--partition", "a100", "--dry-run")) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH --partition=a100", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --mem=48GB", "#SBATCH --time=30", "#SBATCH --array=0-2%2", "#SBATCH --account=proj",
                 "#SBATCH --signal=USR2@90", "module load cuda", "-u -m modbench.suite.submitit_job"):
        assert line in script.splitlines() or line in script, line
    cells = [line for line in script.splitlines() if line.startswith("# ") and " -m modbench run " in line]
    assert len(cells) == 3 and all("torch.distributed.run --standalone --nproc_per_node 2" in c for c in cells)
    assert str((tmp_path / "runs").resolve()) in cells[0]  # jobs start elsewhere: absolute run folders
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was submitted
    assert main(_argv(tmp_path, matrix, data_root, "--launcher", "local", "--gpus", "0", "--dry-run")) == 0
    local = capsys.readouterr().out
    assert "#SBATCH" not in local and local.count(" -m modbench run ") == 3 and "torch.distributed" not in local
    assert main(_argv(tmp_path, matrix, data_root, "--launcher", "local", "--detach")) == 2
    assert "--detach needs --launcher slurm" in capsys.readouterr().err


def test_debug_jobs_resubmit_a_failed_cell_which_resumes_and_a_failing_cell_fails_the_matrix(
        tmp_path, data_root, monkeypatch, capsys):
    """submitit's debug executor runs each job in this process: the first attempt of tiny-llava fails on its
    second sample, the resubmitted job answers the two finished samples from their records and runs only the
    failed one; a model whose generation always raises fails every attempt, is listed, and the matrix exits
    non-zero."""
    from modbench.models.vlm import ModVlm

    calls = []
    original = ModVlm.generate

    def second_call_fails_once(self, prompts, *args, **kwargs):
        if self.cfg.mod.scheme == "gamma":  # the cell that fails every attempt
            raise RuntimeError("broken model")
        calls.append(len(prompts))
        if len(calls) == 2:
            raise RuntimeError("node lost")
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(ModVlm, "generate", second_call_fails_once)
    matrix = _matrix(tmp_path, ["tiny-llava", "tiny-llava-gmod"], "launcher:\n  kind: slurm\n  submitit: debug\n"
                                                            "  retries: 1\n  gpus: 0\n")
    code = main(_argv(tmp_path, matrix, data_root))
    printed = capsys.readouterr()
    assert code == 1, printed.err[-3000:]
    failed = [line for line in printed.err.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1 and failed[0].startswith("FAILED tiny-llava-gmod__") and "broken model" in failed[0]
    assert "1 of 2 cell(s) failed" in printed.err and "retry   tiny-llava__" in printed.out
    run = _run_json(tmp_path, "tiny-llava")
    assert run["status"] == "ok" and run["resumed_samples"] == 2 and run["n_samples"] == 3
    assert sum(calls) == 3 + 1  # first attempt: three calls (one raised); the resubmission: only the failed one
    (state_path,) = (tmp_path / "runs" / ".launcher" / "t").glob("state.json")
    cells = json.loads(state_path.read_text())["cells"]
    assert sorted((c["attempts"], c["status"]) for c in cells.values()) == [(2, "failed"), (2, "ok")]
    assert (tmp_path / "tables" / "gamma_mod_table6.md").exists()  # the tables are written all the same


def _task_pid(controller: int) -> int | None:
    import psutil

    try:
        children = psutil.Process(controller).children()
    except psutil.NoSuchProcess:
        return None
    return children[0].pid if children else None


def test_detached_jobs_status_preemption_and_collect(tmp_path, data_root, monkeypatch, capsys):
    """Real job processes (submitit's local executor): --detach returns at once; --status shows the cell
    running; SIGUSR2 (what SLURM sends a job it pre-empts or times out) makes submitit requeue it, and the
    requeued job resumes from the records; --collect waits for it and writes the tables."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    limit = 8
    matrix = _matrix(tmp_path, ["tiny-llava"], "launcher:\n  kind: slurm\n  submitit: local\n  retries: 1\n"
                                               "  gpus: 0\n", limit=limit, protocol="lmms-eval")
    assert main(_argv(tmp_path, matrix, data_root, "--detach")) == 0
    assert "detached:" in capsys.readouterr().out
    from modbench.suite.slurm import _pid_running

    folder = tmp_path / "runs" / ".launcher" / "t"
    (cell,) = json.loads((folder / "state.json").read_text())["cells"].values()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _pid_running(int(cell["job_id"])):  # wait for a finished sample
        records = next(iter((tmp_path / "runs").glob("tiny-llava__*/records.jsonl")), None)
        if records is not None and records.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the job wrote no record: " + "".join(p.read_text()[-2000:] for p in folder.glob("*.out")))
    os.kill(_task_pid(int(cell["job_id"])), signal.SIGUSR2)
    assert main(_argv(tmp_path, matrix, data_root, "--status")) == 0
    status = capsys.readouterr().out
    assert cell["job_id"] in status and "RUNNING" in status
    code = main(_argv(tmp_path, matrix, data_root, "--collect"))
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    run = _run_json(tmp_path, "tiny-llava")
    assert run["status"] == "ok" and run["n_samples"] == limit and 1 <= run["resumed_samples"] < limit, run
    logs = "".join(p.read_text() for p in folder.glob("*_log.out"))
    assert "Requeued job" in logs  # submitit requeued the same job: no resubmission was needed
    assert json.loads((folder / "state.json").read_text())["cells"][run["spec"]["run_id"]]["attempts"] == 1
    assert (tmp_path / "tables" / "gamma_mod_table6.md").exists()
    assert main(_argv(tmp_path, matrix, data_root, "--status")) == 0
    assert "1 ok of 1 cell(s)" in capsys.readouterr().out


CELL_SCRIPT = """
import json, os, sys, time
from pathlib import Path
folder, mode, trace = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
with trace.open("a") as t:
    t.write(f"start {folder.name} {time.monotonic()} {os.environ['OMP_NUM_THREADS']}\\n")
time.sleep(0.4)
attempts = folder / "attempts"
n = int(attempts.read_text()) + 1 if attempts.exists() else 1
folder.mkdir(parents=True, exist_ok=True)
attempts.write_text(str(n))
ok = mode == "ok" or (mode == "flaky" and n > 1)
(folder / "run.json").write_text(json.dumps({"status": "ok" if ok else "failed", "errors": [] if ok else [f"boom {n}"]}))
with trace.open("a") as t:
    t.write(f"end {folder.name} {time.monotonic()}\\n")
sys.exit(0 if ok else 1)
"""


def test_local_cells_run_in_parallel_up_to_jobs_and_failed_ones_run_again(tmp_path):
    """The scheduler of `--jobs N` with a stand-in for `modbench run` (a cell's status is its run.json): never
    more than N cells at once, a flaky cell passes on its retry, an always-failing one is listed after its
    retries."""
    from modbench.suite.launcher import LauncherConfig, run_in_processes
    from modbench.suite.runner import RunSpec

    specs = [RunSpec(model="m", tasks=["t"], output=str(tmp_path / "runs"), run_id=f"{mode}{i}")
             for i, mode in enumerate(["ok", "flaky", "bad", "ok", "ok"])]
    trace = tmp_path / "trace.txt"

    def argv_for(spec):
        return [sys.executable, "-c", CELL_SCRIPT, str(Path(spec.output) / spec.run_id), spec.run_id.rstrip("0123456789"),
                str(trace)]

    failed, printed = [], []
    cfg = LauncherConfig(jobs=2, retries=1).validate()
    run_in_processes(specs, cfg, tmp_path / "logs", failed, log=printed.append, argv_for=argv_for)
    assert failed == ["bad2: boom 2"]
    attempts = {p.parent.name: int(p.read_text()) for p in (tmp_path / "runs").glob("*/attempts")}
    assert attempts == {"ok0": 1, "flaky1": 2, "bad2": 2, "ok3": 1, "ok4": 1}
    events = sorted((float(line.split()[2]), line.split()[0]) for line in trace.read_text().splitlines())
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2  # in parallel, and never more than --jobs
    threads = {line.split()[3] for line in trace.read_text().splitlines() if line.startswith("start")}
    assert threads == {os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // 2)))}
    assert any(line.startswith("retry   flaky1") for line in printed)


def test_a_cell_carries_its_answer_cap_and_a_capped_run_is_another_run():
    from modbench.suite.launcher import cell_argv
    from modbench.suite.runner import RunSpec

    spec = RunSpec(model="tiny-llava", tasks=["pope_local"], limit=2, max_new_tokens=8)
    assert spec.default_run_id().endswith("__l2__m8")
    assert RunSpec(model="tiny-llava", tasks=["pope_local"], limit=2).default_run_id().endswith("__l2")
    spec.run_id = spec.default_run_id()
    argv = cell_argv(spec)
    assert argv[argv.index("--max-new-tokens") + 1] == "8"
    assert "--max-new-tokens" not in cell_argv(RunSpec(model="tiny-llava", tasks=["pope_local"], run_id="r"))
