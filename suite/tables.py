"""`modbench table`: the papers' tables regenerated from runs, paper / ours / delta side by side.

Each paper row names the released variant it corresponds to and the tiny twin that stands in for it in the
CI matrix; "ours" comes from a run of the released variant when there is one, else from the tiny twin (the
`source` column says which). A cell without a run, or a benchmark we do not run, says "not run".
Outputs Markdown, LaTeX and CSV per table (pandas + tabulate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"
NOT_RUN = "not run"


def _metric(task: str, name: str, scale: float = 100.0) -> Callable[[dict], float | str]:
    def get(run: dict):
        value = run["metrics"].get(task, {}).get(name, {}).get("value")
        if isinstance(value, (int, float)):
            return round(value * scale, 2)
        return value if isinstance(value, str) else NOT_RUN

    return get


def _skip(task: str) -> Callable[[dict], float | str]:
    def get(run: dict):
        per_task = (run.get("efficiency") or {}).get("per_task", {})
        value = per_task.get(task, {}).get("overall_skip")
        return round(100 * value, 2) if value is not None else NOT_RUN

    return get


AVERAGE_TASKS = ("gqa_local", "scienceqa_img_local", "mmmu_val_local", "textvqa_val_ocr_local")
COLUMNS: dict[str, Callable[[dict], float | str]] = {
    "gqa_acc": _metric("gqa_local", "exact_match"), "gqa": _metric("gqa_local", "exact_match"),
    "sqa_acc": _metric("scienceqa_img_local", "exact_match"), "sqa_img": _metric("scienceqa_img_local", "exact_match"),
    "sqa": _metric("scienceqa_img_local", "exact_match"),
    "mmmu_acc": _metric("mmmu_val_local", "mmmu_acc"), "mmmu": _metric("mmmu_val_local", "mmmu_acc"),
    "textvqa_acc": _metric("textvqa_val_ocr_local", "exact_match"),
    "textvqa": _metric("textvqa_val_ocr_local", "exact_match"),
    "vqav2": _metric("vqav2_val_local", "exact_match"),
    "pope": _metric("pope_local", "pope_f1_score"),
    "mme": _metric("mme_local", "mme_perception_score", scale=1.0),
    "mmb": _metric("mmbench_en_dev_local", "mmbench_circular_acc"),
    "mmvet": _metric("mmvet_local", "gpt_eval_score", scale=1.0),
    "seed": _metric("seedbench_local", "seed_image"),
    "gqa_skip": _skip("gqa_local"), "sqa_skip": _skip("scienceqa_img_local"), "mmmu_skip": _skip("mmmu_val_local"),
    "textvqa_skip": _skip("textvqa_val_ocr_local"),
}


def _average(run: dict, keys: tuple[str, ...]):
    values = [COLUMNS[k](run) for k in keys]
    return round(sum(values) / len(values), 2) if all(isinstance(v, float) for v in values) else NOT_RUN


def _avg_tflops(run: dict):
    per_task = (run.get("efficiency") or {}).get("per_task", {})
    values = [per_task.get(t, {}).get("tflops_analytic") for t in AVERAGE_TASKS]
    # significant digits, not decimals: tiny models run ~1e-5 TFLOPs
    return float(f"{sum(values) / len(values):.4g}") if all(v is not None for v in values) else NOT_RUN


def _kv_share(run: dict):
    routing = (run.get("efficiency") or {}).get("routing_all_tokens")
    return round(100 * routing["kept_share_all_layers"], 2) if routing else NOT_RUN


COLUMNS.update({
    "kv_cache_storage_pct": _kv_share,
    "avg_acc": lambda run: _average(run, ("gqa_acc", "sqa_acc", "mmmu_acc", "textvqa_acc")),
    "avg_skip": lambda run: _average(run, ("gqa_skip", "sqa_skip", "mmmu_skip", "textvqa_skip")),
    "tflops": _avg_tflops, "avg_tflops": _avg_tflops, "inference_tflops": _avg_tflops,
})


@dataclass
class TableSpec:
    name: str
    csv: str
    keys: list[str]  # columns identifying a row
    rows: dict[tuple, tuple[str, str]]  # row key -> (released variant, tiny twin); absent: not run


PMOD_ROWS = {
    ("LLaVA-v1.5", "7B"): ("llava-1.5-7b", "tiny-llava"),
    ("p-MoD-LLaVA-v1.5", "7B"): ("pmod-llava-1.5-7b", "tiny-llava-pmod"),
    ("LLaVA-NeXT", "7B"): ("llava-next-7b", "tiny-llava-next"),
    ("p-MoD-LLaVA-NeXT", "7B"): ("pmod-llava-next-7b", "tiny-pmod-llava-next"),
}
TABLES = [
    TableSpec("gamma_mod_table1", "gamma_mod_table1_ablation.csv", ["section", "setting"], {
        ("baseline", "LLaVA-HR dense"): ("llava-hr-7b", "tiny-llava-hr"),
        ("mod_layer", "ARank-based deployment"): ("llava-hr-7b-gmod-0.34", "tiny-llava-hr-gmod"),
        ("masked_token", "Q"): ("llava-hr-7b-gmod-0.34", "tiny-llava-hr-gmod"),
        ("shared_router", "shared"): ("llava-hr-7b-gmod-0.5", "tiny-llava-hr-gmod"),
        ("routing_ratio", "34%"): ("llava-hr-7b-gmod-0.34", "tiny-llava-hr-gmod"),
        ("routing_ratio", "51%"): ("llava-hr-7b-gmod-0.5", "tiny-llava-hr-gmod"),
    }),
    TableSpec("gamma_mod_table3", "gamma_mod_table3_scalability.csv", ["model", "variant", "params"], {
        ("LLaVA", "dense", "7B"): ("llava-1.5-7b", "tiny-llava"),
        ("LLaVA-HR", "dense", "7B"): ("llava-hr-7b", "tiny-llava-hr"),
        ("LLaVA-HR", "gamma-mod-0.3", "7B"): ("llava-hr-7b-gmod-0.34", "tiny-llava-hr-gmod"),
        ("LLaVA-HR", "gamma-mod-0.5", "7B"): ("llava-hr-7b-gmod-0.5", ""),
        ("Mini-Gemini-HD", "dense", "7B"): ("mgm-hd-7b", "tiny-mgm-hd"),
        ("Mini-Gemini-HD", "gamma-mod-0.3", "7B"): ("mgm-hd-7b-gmod-0.34", "tiny-mgm-hd-gmod"),
        ("Mini-Gemini-HD", "gamma-mod-0.5", "7B"): ("mgm-hd-7b-gmod-0.5", ""),
        ("LLaVA-HR", "dense", "13B"): ("llava-hr-13b", ""),
        ("LLaVA-HR", "gamma-mod-0.3", "13B"): ("llava-hr-13b-gmod-0.34", ""),
        ("LLaVA-HR", "gamma-mod-0.5", "13B"): ("llava-hr-13b-gmod-0.5", ""),
    }),
    TableSpec("gamma_mod_table4", "gamma_mod_table4_efficiency.csv", ["method"], {
        ("LLaVA-HR-7B dense",): ("llava-hr-7b", "tiny-llava-hr"),
        ("gamma-mod-0.3",): ("llava-hr-7b-gmod-0.34", "tiny-llava-hr-gmod"),
        ("gamma-mod-0.5",): ("llava-hr-7b-gmod-0.5", ""),
    }),
    TableSpec("gamma_mod_table6", "gamma_mod_table6_nine_benchmarks.csv", ["group", "method", "params"], {
        ("dense", "LLaVA-1.5", "7B"): ("llava-1.5-7b", "tiny-llava"),
        ("dense", "LLaVA-HR", "7B"): ("llava-hr-7b", "tiny-llava-hr"),
        ("dense", "LLaVA-HR", "13B"): ("llava-hr-13b", ""),
        ("sparse", "gamma-mod-LLaVA-HR", "7B"): ("llava-hr-7b-gmod-0.5", "tiny-llava-hr-gmod"),
        ("sparse", "gamma-mod-LLaVA-HR", "13B"): ("llava-hr-13b-gmod-0.5", ""),
    }),
    TableSpec("pmod_table1", "pmod_table1_general.csv", ["model", "params"], PMOD_ROWS),
    TableSpec("pmod_table2", "pmod_table2_text_rich.csv", ["model", "params"], PMOD_ROWS),
]


def load_runs(runs_dir: str | Path) -> dict[str, dict]:
    """Finished runs by model (the newest per model), validated against the results schema."""
    from suite.results import load_results

    runs = {}
    for path in sorted(Path(runs_dir).glob("*/run.json"), key=lambda p: p.stat().st_mtime):
        run = load_results(path)
        if run.get("status") == "ok":
            runs[run["spec"]["model"]] = run
    return runs


def build_table(spec: TableSpec, runs: dict[str, dict]) -> pd.DataFrame:
    paper = pd.read_csv(PAPER_DIR / spec.csv, dtype={k: str for k in spec.keys})
    metrics = [c for c in paper.columns if c not in spec.keys]
    rows = []
    for _, prow in paper.iterrows():
        key = tuple(str(prow[k]) for k in spec.keys)
        released, tiny = spec.rows.get(key, ("", ""))
        run = runs.get(released) or (runs.get(tiny) if tiny else None)
        out = {k: prow[k] for k in spec.keys}
        out["source"] = (released if released in runs else tiny) if run else NOT_RUN
        for metric in metrics:
            ours = COLUMNS[metric](run) if run is not None and metric in COLUMNS else NOT_RUN
            out[f"{metric} paper"] = prow[metric]
            out[f"{metric} ours"] = ours
            out[f"{metric} delta"] = (float(f"{ours - float(prow[metric]):.4g}")
                                      if isinstance(ours, (int, float)) and not isinstance(ours, bool) else NOT_RUN)
        rows.append(out)
    return pd.DataFrame(rows)


def write_tables(runs_dir: str | Path, out_dir: str | Path) -> list[Path]:
    from tabulate import tabulate

    from suite.results import write_text_atomic

    runs = load_runs(runs_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in TABLES:
        table = build_table(spec, runs)
        base = out_dir / spec.name
        written += [
            write_text_atomic(f"{base}.csv", table.to_csv(index=False)),
            write_text_atomic(f"{base}.md", f"# {spec.name} (paper: results/paper/{spec.csv})\n\n"
                              + tabulate(table, headers="keys", tablefmt="pipe", showindex=False) + "\n"),
            write_text_atomic(f"{base}.tex", table.to_latex(index=False, escape=True)),
        ]
    write_text_atomic(out_dir / "runs.json", json.dumps({m: r["spec"] for m, r in runs.items()}, indent=2))
    return written
