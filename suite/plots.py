"""Plots (PNG and SVG) from runs: Δ accuracy against the TFLOPs ratio, each against the dense host of the same
source, the papers' points and ours on the same axes; and the per-layer skip ratio by token type (γ-MoD Fig. 4a).
Uses matplotlib's object API (no pyplot, no global backend switch)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from modbench.suite.tables import (
    NOT_RUN,
    RELEASED,
    STAND_IN,
    TABLES,
    TFLOPS_X,
    TRAINED,
    build_table,
    load_runs,
    write_index,
)

PAPER_POINTS = ("gamma_mod_table3", "pmod_table1")  # one point per MoD row (Table 1's ablations in grey)
PAPER_STYLE = {"gamma": ("γ-MoD", "tab:blue"), "pmod": ("p-MoD", "tab:purple")}  # a table's scheme: name, colour
OURS_STYLE = {RELEASED: dict(marker="o", color="tab:red", label="ours: released checkpoint"),
              TRAINED: dict(marker="^", color="tab:green", label="ours: trained here (CPU scale)"),
              STAND_IN: dict(marker="o", facecolors="none", edgecolors="0.45",
                             label="ours: random stand-in (pipeline check; accuracy means nothing)")}


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


def accuracy_change_vs_tflops_ratio(runs: dict, out: Path) -> list[Path]:
    """Δ average accuracy (points) vs the TFLOPs ratio, both against the dense host of the same source: the
    papers' points (squares, unlabelled: the tables name them; Table 1's ablations as grey crosses) and ours,
    marked by source."""
    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    axis = fig.add_subplot(1, 1, 1)
    ours_seen: set = set()
    labelled: set = set()
    for spec in TABLES:
        if spec.name not in (*PAPER_POINTS, "gamma_mod_table1"):
            continue
        for row in build_table(spec, runs):
            if row.is_host:
                continue
            x, y = row.paper.ratios.get(TFLOPS_X), row.paper.delta_points
            if spec.name == "gamma_mod_table1":
                label = "paper: γ-MoD Table 1 ablations" if "t1" not in labelled else None
                labelled.add("t1")
                axis.scatter(x, y, marker="x", color="0.65", s=18, label=label)
            elif x is not None and y is not None:
                family, colour = PAPER_STYLE[spec.scheme]
                label = f"paper: {family}" if family not in labelled else None
                labelled.add(family)
                axis.scatter(x, y, marker="s", color=colour, label=label)
            if spec.name not in PAPER_POINTS or row.ours is None or row.source.kind == NOT_RUN:
                continue
            x, y = row.ours.ratios.get(TFLOPS_X), row.ours.delta_points
            if not isinstance(x, float) or y is None or (row.source.model, row.host_source.model) in ours_seen:
                continue
            ours_seen.add((row.source.model, row.host_source.model))
            style = dict(OURS_STYLE[row.source.kind])
            if style["label"] in labelled:
                style.pop("label")
            labelled.add(style.get("label"))
            axis.scatter(x, y, **style)
            axis.annotate(row.source.model, (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
    axis.axhline(0, color="0.8", lw=0.8)
    axis.axvline(1, color="0.8", lw=0.8)
    axis.set(title="Accuracy change vs TFLOPs, each against the dense host of the same source",
             xlabel="prefill TFLOPs, ratio to the dense host (analytic, LLM prefill)",
             ylabel="Δ average accuracy vs the dense host (points)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    return _save(fig, out / "accuracy_change_vs_tflops_ratio")


def skip_heatmaps(runs: dict, out: Path) -> list[Path]:
    from modbench.models.routing import TOKEN_TYPE_NAMES

    types = [t for t in TOKEN_TYPE_NAMES if t != "pad"]
    first = [(key.replace("trained:", "trained "), seeds[min(seeds)]) for key, seeds in runs.items()]
    mod_runs = [(name, run) for name, run in first
                if run.get("resolved", {}).get("mod_scheme") not in (None, "dense") and run.get("efficiency")]
    if not mod_runs:
        return []
    fig = Figure(figsize=(7, 1.9 * len(mod_runs) + 0.5), layout="constrained")
    for i, (name, run) in enumerate(mod_runs):
        axis = fig.add_subplot(len(mod_runs), 1, i + 1)
        layers = run["efficiency"]["routing_all_tokens"]["per_layer"]
        grid = [[layer.get(f"skip_{t}", float("nan")) for layer in layers] for t in types]
        image = axis.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        axis.set(yticks=range(len(types)), yticklabels=types, title=f"{name}: skip ratio per layer")
        axis.set_xticks(range(len(layers)))
        fig.colorbar(image, ax=axis, fraction=0.03)
    axis.set_xlabel("layer")
    return _save(fig, out / "skip_ratio_by_layer")


def write_plots(runs_dir: str | Path, out_dir: str | Path) -> list[Path]:
    runs = load_runs(runs_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = accuracy_change_vs_tflops_ratio(runs, out) + skip_heatmaps(runs, out)
    write_index(out, runs)
    return paths
