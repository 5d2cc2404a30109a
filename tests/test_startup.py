"""Start-up costs only what a command uses; local tasks only; data roots outside the checkout."""

import json
import statistics
import subprocess
import sys

import pytest

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["matrix", "--help"],
    ["table", "--runs", "{tmp}/runs", "--out", "{tmp}/tables"],
    ["check", "--runs", "{tmp}/runs", "--baseline", str(ROOT / "results" / "baselines" / "bench.json")],
])
def test_light_commands_import_neither_torch_nor_lmms_eval_nor_submitit(argv, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (
        "import sys\n"
        "from modbench.suite.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'lmms_eval', 'transformers', 'timm', 'submitit') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    heavy = [line for line in done.stdout.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], done.stdout[-2000:] + done.stderr[-2000:]


def test_timm_is_imported_only_where_a_convnext_is_built():
    """timm costs seconds to import; no module of models/ imports it at module level."""
    import ast

    for path in sorted((ROOT / "models").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "timm" for n in names), f"{path.name} imports timm at module level"


def test_task_manager_indexes_only_the_local_tasks():
    from modbench.tasks.registry import local_tasks, task_manager

    manager = task_manager()
    assert set(manager.all_tasks) == set(local_tasks())  # none of lmms-eval's ~3,200 built-in YAMLs


def test_a_data_root_outside_the_checkout(tmp_path):
    """Fixtures written to another root are read there; tasks/data is neither read nor written."""
    from modbench.suite.cli import main
    from modbench.suite.runner import RunSpec, run
    from modbench.tasks.registry import DATA_DIR

    before = sorted(p.name for p in DATA_DIR.iterdir()) if DATA_DIR.exists() else None
    root = tmp_path / "elsewhere"
    assert main(["data", "fixtures", "--root", str(root), "--only", "gqa"]) == 0
    (root / "gqa" / "testdev.parquet").rename(root / "gqa" / "moved.parquet")
    outcome = run(RunSpec(model="tiny-llava", tasks=["gqa_local"], limit=1, output=str(tmp_path / "runs"),
                          data_root=str(root)), progress=False)
    assert outcome.status == "failed" and str(root / "gqa" / "testdev.parquet") in outcome.errors[0]
    (root / "gqa" / "moved.parquet").rename(root / "gqa" / "testdev.parquet")
    outcome = run(RunSpec(model="tiny-llava", tasks=["gqa_local"], limit=2, output=str(tmp_path / "runs"),
                          data_root=str(root)), progress=False)
    assert outcome.status == "ok", outcome.errors
    spec = json.loads((outcome.run_dir / "run.json").read_text())["spec"]
    assert spec["data_root"] == str(root)
    assert not DATA_DIR.is_symlink()
    assert (sorted(p.name for p in DATA_DIR.iterdir()) if DATA_DIR.exists() else None) == before


def test_overhead_benchmark_reports_its_parts(tmp_path):
    from modbench.suite.overhead import OverheadSpec, measure_overhead

    result = measure_overhead(OverheadSpec(model="tiny-llava", task="gqa_local", limit=2, batch_size=1, repeats=1),
                              progress=lambda *_: None)
    seconds = result["seconds"]
    assert result["samples"] == {"small": 1, "full": 2}
    assert all(len(v) == 1 for series in seconds.values() for v in series.values())
    # the model calls inside the suite are part of its wall time, and the bare replay runs the same calls
    assert all(inside <= wall for inside, wall in zip(seconds["model_inside_suite"][2], seconds["suite"][2]))
    assert result["samples_replayed_bare"] == {1: 1, 2: 2}  # the bare replay ran exactly the suite's samples
    slope = {name: series[2][0] - series[1][0] for name, series in seconds.items()}
    if slope["suite"] > 0:  # one repeat: the shares are that repeat's own
        assert result["overhead_share"] == pytest.approx(1 - slope["bare"] / slope["suite"])
        assert result["outside_model_share"] == pytest.approx(1 - slope["model_inside_suite"] / slope["suite"])
    assert result["repeats_without_slope"] == (0 if slope["suite"] > 0 else 1)


def test_overhead_shares_pair_each_repeats_runs():
    """Each repeat's bare slope is divided by the same repeat's suite slope; the median of those shares differs
    from one share of the medians (which a slow repeat of one and a fast repeat of the other would skew), and a
    repeat whose suite time did not grow has no share."""
    from modbench.suite.overhead import paired_shares

    suite = {4: [1.0, 1.0, 2.0, 1.0], 16: [2.0, 3.0, 3.0, 1.0]}  # slopes 1, 2, 1, 0
    bare = {4: [1.0, 1.0, 1.0, 1.0], 16: [1.9, 2.2, 1.8, 1.5]}  # slopes 0.9, 1.2, 0.8, 0.5
    assert paired_shares(suite, bare, 4, 16) == pytest.approx([0.1, 0.4, 0.2])
    med = {name: {n: statistics.median(v) for n, v in series.items()} for name, series in (("s", suite), ("b", bare))}
    of_medians = 1 - (med["b"][16] - med["b"][4]) / (med["s"][16] - med["s"][4])  # 1 - 0.85 / 1.5
    assert statistics.median(paired_shares(suite, bare, 4, 16)) == pytest.approx(0.2)
    assert of_medians == pytest.approx(0.4333, abs=1e-3)
    swapped = {4: bare[4], 16: [2.2, 1.9, 1.8, 1.5]}  # the first two repeats' bare runs exchanged
    assert paired_shares(suite, swapped, 4, 16) != paired_shares(suite, bare, 4, 16)


def test_a_deferred_module_loads_once_at_its_first_use(tmp_path, monkeypatch):
    """lmms-eval's unused imports (`evaluate`) are deferred, not removed: the module that imports them binds a
    stand-in, whose first missing attribute imports the real module once; the stand-in is out of sys.modules
    again at once, so a later import (of the module or a submodule) is an ordinary one."""
    import inspect
    import os
    import sys

    from modbench.tasks.registry import DeferredModule, defer_unused_lmms_eval_imports

    (tmp_path / "deferred_probe").mkdir()
    (tmp_path / "deferred_probe" / "__init__.py").write_text(
        "import os\nLOADS = int(os.environ.get('PROBE_LOADS', 0)) + 1\nos.environ['PROBE_LOADS'] = str(LOADS)\n"
        "from . import part\ndef answer():\n    return 42\n")
    (tmp_path / "deferred_probe" / "part.py").write_text(
        "import os\nos.environ['PROBE_PART_LOADS'] = str(int(os.environ.get('PROBE_PART_LOADS', 0)) + 1)\n")
    (tmp_path / "probe_user.py").write_text("import deferred_probe as bound\n")  # as lmms_eval.api.registry does
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("PROBE_LOADS", "PROBE_PART_LOADS"):  # set first, so that monkeypatch restores their absence
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    for name in ("deferred_probe", "deferred_probe.part", "probe_user"):
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    assert defer_unused_lmms_eval_imports(("deferred_probe", "no_such_module_here"), "probe_user") == [
        "deferred_probe"]
    bound = sys.modules["probe_user"].bound
    assert isinstance(bound, DeferredModule) and "deferred_probe" not in sys.modules
    inspect.getmodule(test_a_deferred_module_loads_once_at_its_first_use)  # scans sys.modules
    assert "PROBE_LOADS" not in os.environ
    assert bound.answer() == 42 and bound.LOADS == 1
    real = sys.modules["deferred_probe"]
    assert not isinstance(real, DeferredModule) and bound.answer is real.answer
    import deferred_probe.part  # noqa: F401  (a submodule after the real load: executed once)

    assert (os.environ["PROBE_LOADS"], os.environ["PROBE_PART_LOADS"]) == ("1", "1")
    assert defer_unused_lmms_eval_imports(("deferred_probe",), "probe_user") == []  # importer already imported


def test_lmms_eval_starts_without_importing_its_unused_modules():
    code = ("import sys\nfrom modbench.tasks.registry import task_manager\ntask_manager()\n"
            "import lmms_eval.evaluator, lmms_eval.api.registry as r\n"
            "print('EVALUATE=' + str('evaluate' in sys.modules) + ' ' + type(r.hf_evaluate).__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "EVALUATE=False DeferredModule" in done.stdout.splitlines(), done.stdout[-2000:] + done.stderr[-2000:]
