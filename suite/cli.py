"""The `modbench` command line (also `python -m modbench`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_SMOKE_OUT = "results/runs/smoke.json"


def _build(name: str, seed: int = 0, device: str = "cpu", overrides: dict | None = None):
    """--model: a registered variant (seeded random weights; one with a hub id: its released checkpoint from the
    local HF cache), a checkpoint directory or a cached hub id."""
    from modbench.models.resolver import build, resolve

    return build(resolve(name, overrides), seed=seed, device=device)


def cmd_models(args) -> int:
    from modbench.models import list_variants
    from modbench.models.params import count_parameters
    from modbench.models.routing import scheme_class

    rows = []
    for cfg in list_variants():
        if args.tiny and not cfg.tiny:
            continue
        rows.append({
            "name": cfg.name, "family": cfg.family, "scheme": cfg.mod.scheme,
            "layers": cfg.llm.num_layers,
            "mod_layers": len(scheme_class(cfg.mod.scheme).mod_layers_of(cfg.mod, cfg.llm.num_layers)),
            "params": count_parameters(cfg), "hub_id": cfg.hub_id or "-",
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from tabulate import tabulate

    for row in rows:
        n = row["params"]
        row["params"] = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
    print(tabulate(rows, headers="keys"))
    return 0


def cmd_smoke(args) -> int:
    from modbench.suite.smoke import run_smoke

    names = args.models.split(",") if args.models else None
    path, failed = run_smoke(names, seed=args.seed, max_new_tokens=args.max_new_tokens, output=args.output)
    print(f"wrote {path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_arank(args) -> int:
    from modbench.models.arank import compute_arank
    from modbench.models.prompt import vicuna_v1

    model = _build(args.model, seed=args.seed)
    from modbench.tasks.fixtures import sample_prompts

    samples = [(vicuna_v1(q), image) for q, image in sample_prompts()]
    result = compute_arank(model, samples, num_dense=args.num_dense)
    if args.json:
        print(json.dumps({"model": args.model, **result.to_dict()}, indent=2))
    else:
        for layer, value in enumerate(result.per_layer):
            tag = "MoD" if layer in result.mod_layers else "dense"
            print(f"layer {layer:3d}  ARank {value:8.2f}  {tag}")
        print(f"MoD layers: {result.mod_layers}")
    return 0


def cmd_flops(args) -> int:
    from modbench.models.flops import flops_analytic
    from modbench.models.resolver import resolve

    cfg = resolve(args.model, random_init=True).config  # the config alone: a released variant's is its own
    if args.full:
        from modbench.models.flops import flops_full_meta

        record = flops_full_meta(cfg, int(args.seq_len), args.skip, args.new_tokens, args.image_tokens)
    else:
        record = flops_analytic(cfg, args.seq_len, args.skip, args.image_tokens)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{record['tflops']:.2f} TFLOPs  ({cfg.name}, s={args.seq_len:g}, skip={args.skip}; {record['convention']})")
    for name, value in record.get("tflops_per_component", {}).items():
        print(f"  {name:16s} {value:10.4f}")
    return 0


def cmd_latency(args) -> int:
    from modbench.suite.latency import LatencySpec, latency_table
    from modbench.suite.results import results_record, write_json_atomic

    names = [args.model] + ([args.compare] if args.compare else [])
    batch_sizes = [int(b) for b in str(args.batch_size).split(",")]
    spec = LatencySpec(image_tokens=args.image_tokens, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                       warmup=args.warmup, repeats=args.repeats, seed=args.seed)
    table = latency_table(names, batch_sizes, spec, device=args.device or None, dtype=args.dtype or None,
                          attn_implementation=args.attn_implementation or None, task=args.task or None,
                          limit=args.limit, data_root=data_root(args.data_root))
    from tabulate import tabulate

    rows = table["table"]
    print(tabulate(rows, headers="keys", floatfmt=".4g"))
    for c in table["comparisons"]:
        print(f"batch {c['batch']}: {c['models'][1]} / {c['models'][0]}: prefill time x{c['prefill_time_ratio']:.3f}, "
              f"end-to-end time x{c['e2e_time_ratio']:.3f}, prefill FLOPs x{c['flops_ratio']:.3f}")
    if len(batch_sizes) > 1:
        for name in names:
            per = {r["batch"]: r["samples/s"] for r in rows if r["model"] == name}
            lo, hi = min(per), max(per)
            print(f"{name}: batch {hi} vs {lo}: samples/s x{per[hi] / per[lo]:.2f}")
    if args.output:
        record = results_record("latency", table.pop("spec"), **table)
        print(f"wrote {write_json_atomic(args.output, record)}")
    return 0


def cmd_overhead(args) -> int:
    from modbench.suite.overhead import OverheadSpec, measure_overhead
    from modbench.suite.results import results_record, write_json_atomic

    spec = OverheadSpec(model=args.model, task=args.task, limit=args.limit, batch_size=args.batch_size,
                        repeats=args.repeats, protocol=args.protocol, data_root=data_root(args.data_root))
    result = measure_overhead(spec)
    per = result["per_sample_seconds"]
    print(f"{spec.model} on {spec.task}, batch {spec.batch_size}, steady state per sample (slope "
          f"{result['samples']['small']} -> {result['samples']['full']} samples of the medians of {spec.repeats} "
          "repeats; the shares are medians of each repeat's own):")
    print(f"  through lmms-eval + plugin  {1e3 * per['suite']:9.1f} ms")
    print(f"  model calls inside it       {1e3 * per['inside']:9.1f} ms")
    print(f"  bare model, same batches    {1e3 * per['bare']:9.1f} ms")
    low, high = (100 * v for v in result["overhead_share_range"])
    print(f"  suite overhead              {100 * result['overhead_share']:9.1f} % of the per-sample wall time vs the "
          f"bare model (median of the repeats' paired shares; range {low:.1f} to {high:.1f} %)")
    low, high = (100 * v for v in result["outside_model_share_range"])
    print(f"  outside the model calls     {100 * result['outside_model_share']:9.1f} % of it, in the same runs "
          f"(range {low:.1f} to {high:.1f} %)")
    if result["repeats_without_slope"]:
        print(f"  ({result['repeats_without_slope']} repeat(s) left out of the shares: their suite time did not grow "
              "with the samples; raise --limit)")
    print(f"  fixed cost per run          {result['fixed_seconds_per_run']:9.2f} s (task build, data, metrics)")
    if args.output:
        print(f"wrote {write_json_atomic(args.output, results_record('overhead', result.pop('spec'), **result))}")
    return 0


def cmd_train(args) -> int:
    import dataclasses

    from modbench.models.config import from_dict
    from modbench.suite.train import TrainConfig, train

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    cfg = TrainConfig.from_yaml(args.config, given) if args.config else from_dict(TrainConfig, given)
    record = train(cfg)
    if record is not None:
        print(f"{record['scheme']} model, MoD layers {record['mod_layers']}: {record['steps']} steps, "
              f"{record['samples_seen']} samples, {record['wall_seconds']:.1f} s, final LM loss "
              f"{record['final']['lm_loss']:.4f}" + (f", {record['bad_samples']} bad samples skipped"
                                                      if record["bad_samples"] else ""))
        print(f"wrote {Path(cfg.output) / 'train.json'} and the model ({record['release_layout']} layout) in {cfg.output}")
    return 0


def cmd_reproduce(args) -> int:
    from modbench.suite.reproduce import default_output, preset_for, reproduce, rerender

    output = Path(args.output or default_output(args.preset, args.scope, args.seeds))
    if args.report_only and (args.seed is not None or args.jobs):
        print("--report-only renders a finished reproduction and runs no stage: not with --seed or --jobs",
              file=sys.stderr)
        return 2
    if args.report_only:
        preset_for(args.preset, args.scope, args.seeds)  # the same checks as a run
        rerender(output)
    else:
        reproduce(args.scope, args.preset, args.seeds, output, args.work or None, seed=args.seed,
                  cpu_isa=args.cpu_isa, jobs=args.jobs)
    if args.seed is not None:  # one job of an array over seeds: its stages are cached, the report comes later
        return 0
    claims_path = output / "claims.json"
    for claim in json.loads(claims_path.read_text())["claims"]:
        print(f"{claim['verdict']:>13s}  {claim['paper']:9s} {claim['claim']} (paper {claim['paper_value']}, ours "
              f"{claim['estimate']:.1f})")
    print(f"tables: {claims_path.parent / 'reproduction.md'}")
    return 0


def data_root(arg: str) -> str:
    """--root / --data-root, else $MODBENCH_DATA, else "" (tasks/data, where the task YAMLs read)."""
    value = arg or os.environ.get("MODBENCH_DATA", "")
    return str(Path(value).resolve()) if value else ""


def cmd_data(args) -> int:
    from modbench.tasks.registry import DATA_DIR

    root = Path(data_root(args.root) or DATA_DIR)
    if args.action == "fixtures":
        from modbench.tasks.fixtures import write_all

        written = write_all(root, args.only.split(",") if args.only else None)
        for name, paths in written.items():
            print(f"{name:14s} {', '.join(paths)}")
        return 0
    if not args.task or not args.source:
        raise ValueError("data prepare needs --task and --from")
    from modbench.tasks.prepare import prepare

    for path in prepare(args.task, args.source, root, args.images or None):
        print(f"wrote {path}")
    return 0


def _interrupted(exc: KeyboardInterrupt) -> int:
    """SIGTERM / Ctrl-C: the run folder keeps every finished sample; the same command resumes. 128 + signal."""
    import signal

    signum = getattr(exc, "signum", signal.SIGINT)
    print(f"interrupted ({signal.Signals(signum).name}): run the same command again to resume", file=sys.stderr)
    return 128 + signum


def cmd_run(args) -> int:
    from modbench.suite.runner import RunSpec, run

    spec = RunSpec(model=args.model, tasks=[t for t in args.tasks.split(",") if t], limit=args.limit,
                   protocol=args.protocol, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                   attn_implementation=args.attn_implementation, seed=args.seed, output=args.output,
                   run_id=args.run_id, measure_flops=args.measure_flops, data_root=data_root(args.data_root),
                   max_new_tokens=args.max_new_tokens, random_init=args.random_init)
    try:
        outcome = run(spec)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    if os.environ.get("RANK", "0") != "0":  # data parallel: rank 0 reports for all
        return 0 if outcome.status == "ok" else 1
    if outcome.resumed_samples:
        print(f"resumed: {outcome.resumed_samples} finished sample(s) answered from records.jsonl")
    for task, metrics in outcome.metrics.items():
        shown = ", ".join(f"{k}={v['value']:.4g}" if isinstance(v["value"], (int, float)) else f"{k}={v['value']}"
                          for k, v in metrics.items())
        print(f"{task:28s} {shown}")
    print(f"{outcome.status}: {outcome.run_dir / 'run.json'}")
    for error in outcome.errors[:1] + [e for e in outcome.errors[2:]]:
        print(f"error: {error}", file=sys.stderr)
    return 0 if outcome.status == "ok" else 1


def cmd_matrix(args) -> int:
    from modbench.suite.matrix import MatrixRequest, run_matrix

    modes = [m for m in ("detach", "status", "collect", "dry_run") if getattr(args, m)]
    if len(modes) > 1:
        raise ValueError(f"choose one of {', '.join('--' + m.replace('_', '-') for m in modes)}")
    request = MatrixRequest(
        slice=args.slice, matrix_file=args.matrix, output=args.output, tables=args.tables, plots=not args.no_plots,
        data_root=data_root(args.data_root), rerun=args.rerun, mode=modes[0] if modes else "run",
        launcher={key: getattr(args, key) for key in (
            "launcher", "jobs", "retries", "gpus", "processes", "cpus", "mem_gb", "time_min", "partition",
            "account", "qos", "constraint", "logs", "submitit")})
    try:
        return run_matrix(request)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)


def cmd_table(args) -> int:
    from modbench.suite.tables import write_tables

    for path in write_tables(args.runs, args.out):
        print(path)
    return 0


def cmd_check(args) -> int:
    from modbench.suite.check import report, run_checks, update_baseline

    if args.update_baselines:
        path = update_baseline(args.runs, args.baseline, policy=args.tolerance)
        print(f"wrote {path}")
        return 0
    text, ok = report(run_checks(args.runs, args.baseline))
    print(text)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    # the registries' own lists (modbench.models.config imports nothing heavy), never copies of them
    from modbench.models.config import (
        ATTN_IMPLEMENTATIONS,
        DTYPES,
        GAMMA_PATTERNS,
        MASKED_TOKENS,
        PROTOCOLS,
        SCHEMES,
    )
    from modbench.suite.reproduce import PRESETS, SCOPES  # its module imports nothing heavy either

    parser = argparse.ArgumentParser(
        prog="modbench",
        description="Reproducibility benchmarks for mixture-of-depths multimodal LLMs (γ-MoD, p-MoD).",
        epilog="See README.md for the quick start, the matrix and the results schema.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered model variants with parameter counts")
    p.add_argument("--tiny", action="store_true", help="only the tiny CPU variants")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("run", help="benchmarks through lmms-eval (our plugin + local tasks); non-zero if any failed")
    p.add_argument("--model", required=True, help="variant name (one with a hub id: its released checkpoint, from "
                                                   "the local HF cache), checkpoint directory or cached hub id")
    p.add_argument("--random-init", action="store_true",
                   help="a variant with a hub id: its config with seeded random weights instead of the checkpoint "
                        "(a pipeline check)")
    p.add_argument("--tasks", required=True, help="comma-separated local tasks, e.g. pope_local,gqa_local")
    p.add_argument("--limit", type=int, default=None, help="samples per task")
    p.add_argument("--protocol", default="lmms-eval", choices=PROTOCOLS)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", default="", choices=("", *DTYPES))
    p.add_argument("--device", default="")
    p.add_argument("--attn-implementation", default="", choices=("", *ATTN_IMPLEMENTATIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="results/runs", help="directory for run folders")
    p.add_argument("--run-id", default="", help="run folder name (default: from model, tasks, protocol)")
    p.add_argument("--data-root", default="", help="benchmark data (default $MODBENCH_DATA, else tasks/data); "
                                                    "read in place, the checkout is not touched")
    p.add_argument("--measure-flops", action="store_true",
                   help="per sample: torch counter and fvcore FLOPs of the prefill as it ran (one extra forward)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap every task's new tokens (a smoke test of an untrained model, which never stops early)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("matrix", help="run a slice of matrix.yaml (only what is missing), then tables and plots",
                       description="Runs the missing cells of a slice of matrix.yaml, then writes tables and plots. "
                                   "Cells run here (one after another, or --jobs N at once) or as a SLURM job array "
                                   "(--launcher slurm, through submitit). Launcher settings come from the file's "
                                   "`launcher` section; the flags below override it. A failed or pre-empted cell "
                                   "runs again up to --retries times and resumes from its finished samples. Exits "
                                   "non-zero when a cell failed.")
    p.add_argument("--slice", default="bench", help="slice name in matrix.yaml (default: bench)")
    p.add_argument("--matrix", default=None, help="matrix file (default: matrix.yaml in the current directory, the checkout's root)")
    p.add_argument("--output", default="results/runs", help="run folders (on storage the nodes share, for slurm)")
    p.add_argument("--tables", default="results/tables")
    p.add_argument("--data-root", default="")
    p.add_argument("--rerun", action="store_true", help="run finished cells again")
    p.add_argument("--no-plots", action="store_true")
    launch = p.add_argument_group("launcher (overrides matrix.yaml's launcher section)")
    launch.add_argument("--launcher", choices=["local", "slurm"], help="local: this machine; slurm: a job array")
    launch.add_argument("--jobs", type=int, help="local: cells at once, each its own process (default 1: in this "
                                                 "process)")
    launch.add_argument("--retries", type=int, help="runs of a failed or pre-empted cell after the first (it resumes)")
    launch.add_argument("--gpus", type=int, help="GPUs per cell (slurm --gpus-per-node; local: per parallel slot)")
    launch.add_argument("--processes", type=int, help="processes per cell, data-parallel through torchrun "
                                                      "(default: one per GPU)")
    launch.add_argument("--cpus", type=int, help="CPUs per cell (slurm --cpus-per-task)")
    launch.add_argument("--mem-gb", dest="mem_gb", type=float, help="memory per cell (slurm --mem)")
    launch.add_argument("--time-min", dest="time_min", type=int, help="time limit per cell in minutes (slurm --time)")
    launch.add_argument("--partition", help="slurm partition")
    launch.add_argument("--account", help="slurm account")
    launch.add_argument("--qos", help="slurm quality of service")
    launch.add_argument("--constraint", help="slurm node constraint")
    launch.add_argument("--logs", help="submitit's folder: scripts, logs, state (default <output>/.launcher/<slice>)")
    launch.add_argument("--submitit", choices=["slurm", "local", "debug"],
                        help="the executor behind --launcher slurm: slurm (sbatch), or submitit's local / debug "
                             "executors, which run the same jobs on this machine")
    mode = p.add_argument_group("modes (one at a time)")
    mode.add_argument("--dry-run", dest="dry_run", action="store_true",
                      help="print the sbatch script (slurm) and each cell's command; run nothing")
    mode.add_argument("--detach", action="store_true", help="slurm: submit and return; see --status, --collect")
    mode.add_argument("--status", action="store_true", help="each cell's state (run folder, job, attempts)")
    mode.add_argument("--collect", action="store_true",
                      help="wait for a detached submission (resubmitting failed cells), then write the tables; "
                           "non-zero if a cell did not end ok")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("table", help="the papers' tables from runs: effects vs the dense host, paper beside ours, "
                                     "source per row (md headline; csv, tex detail)")
    p.add_argument("--runs", default="results/runs")
    p.add_argument("--out", default="results/tables")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("check", help="regression check of runs against a baseline (non-zero on regression)")
    p.add_argument("--runs", default="results/runs")
    p.add_argument("--baseline", required=True, help="results/baselines/<name>.json")
    p.add_argument("--update-baselines", action="store_true", help="rewrite the baseline from the runs")
    p.add_argument("--tolerance", choices=("fixed", "noise"), default="fixed",
                   help="with --update-baselines: 'fixed' (2 accuracy points; deterministic fixture runs) or "
                        "'noise' (accuracies only, three standard errors of a retraining's difference per eval set; "
                        "runs of models trained here)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("data", help="benchmark data: `fixtures` (small, drawn) or `prepare` (a downloaded copy)")
    p.add_argument("action", choices=["fixtures", "prepare"])
    p.add_argument("--root", default="", help="data root (default $MODBENCH_DATA, else tasks/data)")
    p.add_argument("--only", default="", help="fixtures: comma-separated benchmarks (default: all registered)")
    p.add_argument("--task", default="", help="prepare: a benchmark registered in tasks/benchmarks.py (its data "
                                              "folder: pope, gqa, scienceqa_img, ...)")
    p.add_argument("--from", dest="source", default="", help="prepare: save_to_disk dir, parquet dir or file")
    p.add_argument("--images", default="", help="prepare gqa: the testdev_balanced_images copy to join")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("smoke", help="forward + generate on every tiny variant (CPU, seconds)")
    p.add_argument("--models", default="", help="comma-separated variant names (default: every tiny variant)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=DEFAULT_SMOKE_OUT, help=f"results file (default {DEFAULT_SMOKE_OUT})")
    p.set_defaults(func=cmd_smoke)

    p = sub.add_parser("arank", help="per-layer ARank of a model and the layers it would make MoD")
    p.add_argument("--model", required=True, help="variant name or checkpoint directory")
    p.add_argument("--num-dense", type=int, default=4, help="layers with the largest ARank that stay dense")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_arank)

    p = sub.add_parser("flops", help="prefill TFLOPs in the papers' convention (LLM decoder, 2 per MAC), counted "
                                      "on the real decoder layers on the meta device")
    p.add_argument("--model", required=True, help="variant name or checkpoint directory")
    p.add_argument("--seq-len", type=float, required=True, help="(average) prefill sequence length")
    p.add_argument("--skip", type=float, default=None, help="skip ratio of MoD layers (γ-MoD: required)")
    p.add_argument("--image-tokens", type=int, default=None, help="p-MoD: vision tokens in the sequence")
    p.add_argument("--full", action="store_true",
                   help="full accounting per component (vision, projector, LLM, router, lm_head, decode) with "
                        "torch.utils.flop_counter on the meta device")
    p.add_argument("--new-tokens", type=int, default=0, help="--full: decode steps to count")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("latency", help="wall-clock (vision, prefill, decode, end to end), memory and KV cache")
    p.add_argument("--model", required=True, help="variant name (seeded random weights; one with a hub id: its "
                                                   "released checkpoint, from the local HF cache) or checkpoint "
                                                   "directory")
    p.add_argument("--compare", default="", help="a second model, run side by side (ratios printed)")
    p.add_argument("--image-tokens", type=int, default=1024)
    p.add_argument("--prompt-tokens", type=int, default=60)
    p.add_argument("--new-tokens", type=int, default=8, help="forced output length (no early EOS)")
    p.add_argument("--batch-size", default="1", help="one or more, comma-separated (e.g. 1,8)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="", help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default="", choices=("", *DTYPES))
    p.add_argument("--attn-implementation", default="", choices=("", *ATTN_IMPLEMENTATIONS))
    p.add_argument("--task", default="", help="time the first --limit samples of a local task (of a group: its "
                                              "first member task) instead of synthetic shapes")
    p.add_argument("--limit", type=int, default=8, help="--task: samples")
    p.add_argument("--data-root", default="", help="--task: benchmark data (default $MODBENCH_DATA, else tasks/data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="", help="results file (JSON)")
    p.set_defaults(func=cmd_latency)

    p = sub.add_parser("train", help="train dense / γ-MoD / p-MoD on LLaVA instruction JSON (accelerate)",
                       description="Train a model on LLaVA's instruction-tuning JSON. Flags override --config "
                                   "(a YAML view of suite.train.TrainConfig; unknown keys are errors). A dense "
                                   "model given --scheme gamma|pmod is converted: every weight copied, routers new. "
                                   "Writes the model in the released layout, train.json, train_log.jsonl and "
                                   "resumable checkpoints to --output.")
    p.add_argument("--config", default="", help="YAML file of TrainConfig fields")
    p.add_argument("--model", help="variant (trained from its seeded random init; one with a hub id: from its "
                                   "released checkpoint, in the local HF cache) or checkpoint directory")
    p.add_argument("--scheme", choices=SCHEMES, help="default: the model's own")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mod-layers", dest="mod_layers", help="MoD layers, e.g. 3-30 or 1,2,4")
    group.add_argument("--arank-keep", dest="arank_keep", type=int,
                       help="γ-MoD: every layer but the k highest-ARank ones of the dense model (ARank over "
                            "--arank-samples image samples of the data)")
    group.add_argument("--mod-pattern", dest="mod_pattern", choices=GAMMA_PATTERNS,
                       help="γ-MoD Table 1 deployments over layers 1..L-2")
    p.add_argument("--arank-samples", dest="arank_samples", type=int)
    p.add_argument("--router", choices=["shared", "per-layer"], help="γ-MoD router (default shared)")
    p.add_argument("--masked", choices=MASKED_TOKENS,
                   help="γ-MoD masked routing learning: force-kept token types (default qa, as released)")
    p.add_argument("--skip-fraction", dest="skip_fraction", type=float,
                   help="γ-MoD: share of routable tokens skipped per MoD layer in training (default 0.5)")
    p.add_argument("--ratios", help="p-MoD with --mod-layers: kept ratio, one for all or one per layer")
    p.add_argument("--data", help="LLaVA instruction JSON")
    p.add_argument("--images", help="image folder (default: the JSON's folder)")
    p.add_argument("--tower-features", dest="tower_features",
                   help="the frozen tower's output per training image (a vision pretraining's "
                        "tower_features.safetensors): training runs the projector on it instead of the tower")
    p.add_argument("--stage", choices=["pretrain", "finetune"],
                   help="pretrain: connector only; finetune (default): connector + LLM + routers")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, help="optimizer steps")
    steps.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="per process and micro-step (default 8)")
    p.add_argument("--grad-accum", dest="grad_accum", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (cosine, warm-up ratio 0.03; default 2e-5)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--warmup-ratio", dest="warmup_ratio", type=float)
    p.add_argument("--mixed-precision", dest="mixed_precision", choices=["no", "bf16", "fp16"])
    p.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None)
    p.add_argument("--train-vision", dest="train_vision", action="store_true", default=None,
                   help="finetune the vision towers too")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", dest="num_workers", type=int, help="data loader worker processes (default 0)")
    p.add_argument("--group-by-modality-length", dest="group_by_modality_length", action="store_true", default=None,
                   help="batches of image samples only or text-only samples only (but one mixed batch of the "
                        "remainders), as LLaVA's and γ-MoD's fine-tuning (default: a plain seeded order)")
    p.add_argument("--loss-weighting", dest="loss_weighting", choices=["token", "turn"],
                   help="token (default, LLaVA's): the LM loss is the mean over answer tokens; turn: the mean over "
                        "answers of each answer's mean")
    p.add_argument("--save-every", dest="save_every", type=int, help="steps between resumable checkpoints")
    p.add_argument("--log-every", dest="log_every", type=int)
    p.add_argument("--skip-bad-samples", dest="skip_bad_samples", action="store_true", default=None,
                   help="leave broken samples out (counted in train.json) instead of failing")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --output")
    p.add_argument("--device", help="cpu to force the CPU (default: accelerate's choice)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--output", help="output directory")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="the papers' claims at CPU scale: train, ARank, fine-tune, evaluate, verdicts",
                       description="Pretrains a small vision tower on drawn scenes (the stand-in for CLIP; frozen "
                                   "afterwards, as in LLaVA), trains a small LLaVA on them, picks γ-MoD layers by "
                                   "ARank, fine-tunes "
                                   "γ-MoD and p-MoD beside a dense continuation, evaluates every model through "
                                   "lmms-eval on held-out sets in the benchmarks' schemas, measures speed, and writes "
                                   "the papers' tables with computed verdicts. Every stage is cached under a hash of "
                                   "its inputs: an interrupted run continues, a rerun redoes nothing.")
    p.add_argument("scope", nargs="?", default="all", choices=list(SCOPES))
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="quick: dense, γ-MoD 0.5, p-MoD, 1 seed (8–26 min on 2 cores, by the CPU: README, Results at CPU scale); full: every γ-MoD Table 1 "
                        "row and the p-MoD ablation, 3 seeds; quick-hr: quick's recipe on the LLaVA-HR-shaped model "
                        "(CLIP + ConvNeXt at 320 px), 2 seeds (~17-18 min each on the newer of those CPUs); "
                        "micro: a smoke test")
    p.add_argument("--seeds", type=int, default=None, help="override the preset's number of seeds")
    p.add_argument("--seed", type=int, default=None,
                   help="compute only this seed's stages (0-based) into the stage cache and write no report: one "
                        "job per seed on a cluster, then the same command without --seed writes the report")
    p.add_argument("--output", default="", help="report and records (default results/reproduction/<preset>, with "
                   "-<scope> and -<N>seeds appended when those differ from the preset's, e.g. quick-gamma-mod-2seeds)")
    p.add_argument("--jobs", type=int, default=0,
                   help="compute the seeds as one-thread `--seed K` processes, at most this many at once (logs in "
                        "--work/logs), then write the report with one thread: the full preset's committed results "
                        "(3 on 2 cores). Default 0: the seeds in turn in this process, at its thread count")
    p.add_argument("--report-only", dest="report_only", action="store_true",
                   help="run no stage: write the tables, claims and plot again from --output's summary.json with "
                        "this checkout's report code")
    p.add_argument("--work", default="", help="stage cache: corpus, checkpoints, runs (default .cache/reproduce/<preset>)")
    p.add_argument("--cpu-isa", default="avx2", choices=["avx2", "portable", "native"],
                   help="CPU code paths: avx2 (default) pins torch's, oneDNN's and MKL's kernels to AVX2, so that "
                        "machines of one CPU vendor compute the same numbers at the same thread count (the "
                        "committed results: quick 2 threads, full one one-thread process per seed; MKL honours its AVX2 mode on Intel only); portable also pins "
                        "MKL's GEMMs to its vendor-neutral path, the same numbers on Intel and AMD, ~2x slower; "
                        "native: the machine's own, numbers differ")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("overhead", help="the suite's own cost per sample: lmms-eval loop + plugin vs the bare model")
    p.add_argument("--model", default="cpu-llava-hr", help="variant name or checkpoint directory")
    p.add_argument("--task", default="gqa_local")
    p.add_argument("--limit", type=int, default=16, help="samples (timed at limit/4 and limit; the slope is reported)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--protocol", default="llava", choices=PROTOCOLS)
    p.add_argument("--data-root", default="")
    p.add_argument("--output", default="", help="results file (JSON)")
    p.set_defaults(func=cmd_overhead)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError) as exc:  # ConfigError / CheckpointError are ValueErrors
        print(f"modbench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
