"""Plots (PNG and SVG) from runs: accuracy vs TFLOPs per host family with the paper's points beside, and the
per-layer skip ratio by token type (γ-MoD Fig. 4a). Uses matplotlib's object API (no pyplot, no global
backend switch)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from suite.tables import COLUMNS, NOT_RUN, PAPER_DIR, load_runs

FAMILIES = {  # host family -> its models in order: dense, then MoD
    "LLaVA-1.5": ["llava-1.5-7b", "pmod-llava-1.5-7b", "tiny-llava", "tiny-llava-gmod", "tiny-llava-pmod"],
    "LLaVA-NeXT": ["llava-next-7b", "pmod-llava-next-7b", "tiny-llava-next", "tiny-pmod-llava-next"],
    "LLaVA-HR": ["llava-hr-7b", "llava-hr-7b-gmod-0.34", "llava-hr-7b-gmod-0.5", "tiny-llava-hr", "tiny-llava-hr-gmod"],
    "Mini-Gemini-HD": ["mgm-hd-7b", "mgm-hd-7b-gmod-0.34", "mgm-hd-7b-gmod-0.5", "tiny-mgm-hd", "tiny-mgm-hd-gmod"],
}
TYPES = ("system", "image", "question", "response")


def _save(fig: Figure, base: Path) -> list[Path]:
    """PNG and SVG, each written to a temporary name and renamed (readers never see half a file). The SVG
    carries no date and fixed element ids, so the same data gives the same bytes (committed plots stay put)."""
    import os

    from matplotlib import rc_context

    FigureCanvasAgg(fig)
    paths = [base.with_suffix(".png"), base.with_suffix(".svg")]
    for path in paths:
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        with rc_context({"svg.hashsalt": "modbench"}):
            fig.savefig(tmp, bbox_inches="tight", metadata={"Date": None} if path.suffix == ".svg" else None)
        os.replace(tmp, path)
    return paths


def accuracy_vs_tflops(runs: dict, out: Path) -> list[Path]:
    """Ours (filled circles, one line per host family) and the papers' points (hollow squares / triangles)
    on one log-scale TFLOPs axis: tiny twins sit decades left of the released models."""
    fig = Figure(figsize=(8.5, 5), layout="constrained")
    axis = fig.add_subplot(1, 1, 1)
    for family, names in FAMILIES.items():
        points = [(COLUMNS["avg_tflops"](runs[n]), COLUMNS["avg_acc"](runs[n]), n) for n in names if n in runs]
        points = [p for p in points if NOT_RUN not in p[:2]]
        if points:
            xs, ys, labels = zip(*points)
            axis.plot(xs, ys, marker="o", label=f"ours: {family}")
            for x, y, label in points:
                axis.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    table3 = pd.read_csv(PAPER_DIR / "gamma_mod_table3_scalability.csv")
    for (model, params), group in table3.groupby(["model", "params"], sort=False):
        axis.plot(group["avg_tflops"], group["avg_acc"], marker="s", mfc="none", linestyle="--",
                  label=f"paper: {model}-{params}")
        for _, row in group.iterrows():
            axis.annotate(row["variant"], (row["avg_tflops"], row["avg_acc"]), fontsize=6, xytext=(3, -8),
                          textcoords="offset points")
    pmod = pd.read_csv(PAPER_DIR / "pmod_table1_general.csv")
    axis.scatter(pmod["inference_tflops"], pmod["avg"], marker="^", facecolors="none", edgecolors="black",
                 label="paper: p-MoD Table 1 (its own average)")
    axis.set_xscale("log")
    axis.set(title="Average accuracy (GQA, SQA-IMG, MMMU, TextVQA) vs prefill TFLOPs",
             xlabel="TFLOPs (analytic, LLM prefill; log scale)", ylabel="average accuracy (%)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "accuracy_vs_tflops")


def skip_heatmaps(runs: dict, out: Path) -> list[Path]:
    mod_runs = [(name, run) for name, run in runs.items()
                if run.get("resolved", {}).get("mod_scheme") not in (None, "dense") and run.get("efficiency")]
    if not mod_runs:
        return []
    fig = Figure(figsize=(7, 1.9 * len(mod_runs) + 0.5), layout="constrained")
    for i, (name, run) in enumerate(mod_runs):
        axis = fig.add_subplot(len(mod_runs), 1, i + 1)
        layers = run["efficiency"]["routing_all_tokens"]["per_layer"]
        grid = [[layer.get(f"skip_{t}", float("nan")) for layer in layers] for t in TYPES]
        image = axis.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        axis.set(yticks=range(len(TYPES)), yticklabels=TYPES, title=f"{name}: skip ratio per layer")
        axis.set_xticks(range(len(layers)))
        fig.colorbar(image, ax=axis, fraction=0.03)
    axis.set_xlabel("layer")
    return _save(fig, out / "skip_ratio_by_layer")


def write_plots(runs_dir: str | Path, out_dir: str | Path) -> list[Path]:
    runs = load_runs(runs_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return accuracy_vs_tflops(runs, out) + skip_heatmaps(runs, out)
