"""The `modbench` command line (also `python -m modbench`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_SMOKE_OUT = "results/runs/smoke.json"


def _sample_images():
    """Small deterministic images (shapes and colours drawn by PIL) for smoke runs and ARank."""
    from PIL import Image, ImageDraw

    samples = []
    for i, (colour, shape, question) in enumerate([
        ((220, 40, 40), "circle", "Is there a red circle in the image?"),
        ((40, 60, 220), "square", "What colour is the square?"),
        ((40, 170, 60), "triangle", "What shape is shown?"),
    ]):
        image = Image.new("RGB", (64 + 16 * i, 48 + 8 * i), (245, 245, 245))
        draw = ImageDraw.Draw(image)
        w, h = image.size
        if shape == "circle":
            draw.ellipse((10, 8, w - 10, h - 8), fill=colour)
        elif shape == "square":
            draw.rectangle((12, 8, w - 12, h - 8), fill=colour)
        else:
            draw.polygon([(w // 2, 6), (8, h - 6), (w - 8, h - 6)], fill=colour)
        samples.append((question, image))
    return samples


def _build(name: str, seed: int = 0, device: str = "cpu", overrides: dict | None = None):
    """--model: a registered variant (random weights, seeded) or a checkpoint directory / cached hub id."""
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
    """Forward + greedy generate on every tiny variant; writes one results file; non-zero if any failed."""
    import torch
    from modbench.models.prompt import vicuna_v1
    from modbench.suite.results import results_record, write_json_atomic

    from modbench import models

    names = args.models.split(",") if args.models else [c.name for c in models.list_variants() if c.tiny]
    samples = _sample_images()
    prompts = [vicuna_v1(q) for q, _ in samples]
    images = [image for _, image in samples]
    records, failed = [], []
    for name in names:
        start = time.perf_counter()
        try:
            model = models.build_model(name, seed=args.seed)
            with torch.no_grad():
                forward = model(prompts, images, collect_stats=True)
            out = model.generate(prompts, images, max_new_tokens=args.max_new_tokens,
                                 min_new_tokens=args.max_new_tokens, collect_stats=True)
            kept = out["kept"].sum(dim=(0, 2)).float()
            total = out["total"].sum(dim=(0, 2)).float()
            record = {
                "model": name, "status": "ok", "scheme": model.cfg.mod.scheme,
                "prompt_tokens": out["prompt_lengths"], "generated_tokens": [len(t) for t in out["tokens"]],
                "forward_logits_finite": bool(torch.isfinite(forward.logits).all()),
                "kept_ratio_per_layer": [round(v, 4) for v in (kept / total).tolist()],
                "kv_entries_per_layer": out["cache"].layer_lengths().sum(dim=1).tolist(),
                "seconds": round(time.perf_counter() - start, 3),
            }
            if not record["forward_logits_finite"]:
                raise FloatingPointError("non-finite logits")
        except Exception as exc:  # recorded, reported, and the command exits non-zero
            record = {"model": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        records.append(record)
        print(f"{name:28s} {record['status']:6s} "
              + (f"kept/layer={record['kept_ratio_per_layer']}" if record["status"] == "ok" else record["error"]),
              flush=True)
    spec = {"command": "smoke", "models": names, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
            "dtype": "float32", "attn_implementation": "sdpa", "device": "cpu"}
    path = write_json_atomic(args.output, results_record("smoke", spec, runs=records, failed=failed))
    print(f"wrote {path}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_arank(args) -> int:
    from modbench.models.arank import compute_arank
    from modbench.models.prompt import vicuna_v1

    model = _build(args.model, seed=args.seed)
    samples = [(vicuna_v1(q), image) for q, image in _sample_images()]
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

    cfg = resolve(args.model).config
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

    import torch
    from modbench.suite.latency import LatencySpec, measure_latency
    from modbench.suite.results import results_record, write_json_atomic

    names = [args.model] + ([args.compare] if args.compare else [])
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch_sizes = [int(b) for b in str(args.batch_size).split(",")]
    image = _sample_images()[0][1]
    rows, runs = [], []
    for batch in batch_sizes:
        for name in names:
            model = _build(name, seed=args.seed, device=args.device, overrides={
                "dtype": args.dtype or None, "attn_implementation": args.attn_implementation or None})
            spec = LatencySpec(image_tokens=args.image_tokens, prompt_tokens=args.prompt_tokens,
                               new_tokens=args.new_tokens, batch_size=batch, warmup=args.warmup,
                               repeats=args.repeats, seed=args.seed)
            inputs = None
            if args.task:
                from modbench.suite.latency import task_inputs

                inputs = task_inputs(model, args.task, args.limit, batch, data_root(args.data_root))
            result = measure_latency(model, spec, image=image, inputs=inputs)
            result["model"] = name
            runs.append(result)
            sec = result["seconds"]
            rows.append({
                "model": name, "batch": batch,
                "prefill_ms": 1e3 * sec["prefill"]["median"],
                "prefill_p10-p90": f"{1e3 * sec['prefill']['p10']:.1f}-{1e3 * sec['prefill']['p90']:.1f}",
                "decode_ms/token": 1e3 * sec["decode_per_token"]["median"] if "decode_per_token" in sec else None,
                "e2e_ms": 1e3 * sec["end_to_end"]["median"],
                "samples/s": result["samples_per_s"],
                "TFLOPs(prefill)": result["flops_analytic"]["tflops"],
                "skip": result["routing"]["overall_skip"],
                "kv_share": result["kv_cache"]["share_of_dense"],
            })
            del model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    comparisons = []
    if args.compare:
        for batch in batch_sizes:
            a, b = [r for r in rows if r["batch"] == batch]
            comparisons.append({
                "batch": batch, "models": [a["model"], b["model"]],
                "prefill_time_ratio": b["prefill_ms"] / a["prefill_ms"],
                "e2e_time_ratio": b["e2e_ms"] / a["e2e_ms"],
                "flops_ratio": b["TFLOPs(prefill)"] / a["TFLOPs(prefill)"],
            })
    from tabulate import tabulate

    print(tabulate(rows, headers="keys", floatfmt=".4g"))
    for c in comparisons:
        print(f"batch {c['batch']}: {c['models'][1]} / {c['models'][0]}: prefill time x{c['prefill_time_ratio']:.3f}, "
              f"end-to-end time x{c['e2e_time_ratio']:.3f}, prefill FLOPs x{c['flops_ratio']:.3f}")
    if len(batch_sizes) > 1:
        for name in names:
            per = {r["batch"]: r["samples/s"] for r in rows if r["model"] == name}
            lo, hi = min(per), max(per)
            print(f"{name}: batch {hi} vs {lo}: samples/s x{per[hi] / per[lo]:.2f}")
    spec = {"command": "latency", "models": names, "batch_sizes": batch_sizes, "device": args.device,
            "dtype": args.dtype or "variant default", "attn_implementation": args.attn_implementation or "variant default",
            "image_tokens": args.image_tokens, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
            "task": args.task, "limit": args.limit if args.task else None,
            "warmup": args.warmup, "repeats": args.repeats, "seed": args.seed}
    if args.output:
        path = write_json_atomic(args.output, results_record("latency", spec, runs=runs, table=rows,
                                                             comparisons=comparisons))
        print(f"wrote {path}")
    return 0


def cmd_overhead(args) -> int:
    from modbench.suite.overhead import OverheadSpec, measure_overhead
    from modbench.suite.results import results_record, write_json_atomic

    spec = OverheadSpec(model=args.model, task=args.task, limit=args.limit, batch_size=args.batch_size,
                        repeats=args.repeats, protocol=args.protocol, data_root=data_root(args.data_root))
    result = measure_overhead(spec)
    per = result["per_sample_seconds"]
    print(f"{spec.model} on {spec.task}, batch {spec.batch_size}, steady state per sample (slope "
          f"{result['samples']['small']} -> {result['samples']['full']} samples, median of {spec.repeats}):")
    print(f"  through lmms-eval + plugin  {1e3 * per['suite']:9.1f} ms")
    print(f"  model calls inside it       {1e3 * per['inside']:9.1f} ms")
    print(f"  bare model, same batches    {1e3 * per['bare']:9.1f} ms")
    print(f"  suite overhead              {100 * result['overhead_share']:9.1f} % of the per-sample wall time")
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
    from modbench.suite.reproduce import reproduce

    record = reproduce(args.scope, args.preset, args.seeds, args.output or None, args.work or None, seed=args.seed,
                       cpu_isa=args.cpu_isa)
    if args.seed is not None:  # one job of an array over seeds: its stages are cached, the report comes later
        return 0
    claims_path = Path(args.output or f"results/reproduction/{record['spec']['preset']['name']}") / "claims.json"
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
                   max_new_tokens=args.max_new_tokens)
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
    from modbench.suite.launcher import with_overrides
    from modbench.suite.matrix import expand, finished, load_matrix_file

    matrix = load_matrix_file(args.matrix) if args.matrix else load_matrix_file()
    if args.slice not in matrix.slices:
        raise ValueError(f"--slice: unknown slice {args.slice!r}; matrix.yaml has {sorted(matrix.slices)}")
    chosen = matrix.slices[args.slice]
    cfg = with_overrides(matrix.launcher, {
        "kind": args.launcher, "jobs": args.jobs, "retries": args.retries, "gpus": args.gpus,
        "processes": args.processes, "cpus": args.cpus, "mem_gb": args.mem_gb, "time_min": args.time_min,
        "partition": args.partition, "account": args.account, "qos": args.qos, "constraint": args.constraint,
        "logs": args.logs, "submitit": args.submitit})
    modes = [f"--{m.replace('_', '-')}" for m in ("detach", "status", "collect", "dry_run") if getattr(args, m)]
    if len(modes) > 1:
        raise ValueError(f"choose one of {', '.join(modes)}")
    if args.detach and cfg.kind != "slurm":
        raise ValueError("--detach needs --launcher slurm (local cells run while `modbench matrix` runs)")
    root = data_root(args.data_root)
    # jobs start elsewhere: they get absolute paths (the run folders must be on storage the nodes share)
    output = str(Path(args.output).resolve()) if cfg.kind == "slurm" else args.output
    specs = expand(chosen, output, data_root=root)
    folder = cfg.folder(output, args.slice).resolve()
    if args.status:
        return _matrix_status(specs, folder)
    if args.collect:
        return _matrix_collect(args, cfg, specs, folder)
    todo = [s for s in specs if args.rerun or not finished(s)]
    if args.dry_run:
        return _matrix_dry_run(args.slice, cfg, todo, folder)
    _matrix_data(chosen, root)
    print(f"slice {args.slice}: {len(specs)} runs, {len(specs) - len(todo)} already finished", flush=True)
    failed: list[str] = []
    try:
        if cfg.kind == "slurm" and todo:
            from modbench.suite import slurm
            from modbench.suite.launcher import LaunchState

            previous = LaunchState.load(folder)
            if previous is not None and slurm.still_running(previous):  # two jobs must not write one run folder
                raise ValueError(f"jobs of an earlier submission of slice {args.slice} are still running ({folder}): "
                                 "see --status, wait for them with --collect, or cancel them first")
            state = LaunchState(args.slice, cfg.submitit, str(folder), output)
            executor = slurm.make_executor(cfg, args.slice, folder)
            slurm.submit(executor, todo, cfg.processes_per_cell(), state)
            jobs = sorted({c.job_id.split("_")[0] for c in state.cells.values()})
            print(f"submitted {len(todo)} cell(s) as job(s) {', '.join(jobs)} ({cfg.submitit}); logs in {folder}",
                  flush=True)
            if args.detach:
                base = f"modbench matrix --slice {args.slice} --launcher slurm --output {args.output}"
                print(f"detached: `{base} --status` shows them, `{base} --collect` waits and writes the tables")
                return 0
            try:
                failed += slurm.watch(executor, todo, cfg.processes_per_cell(), state, cfg.retries,
                                      cfg.poll_seconds if cfg.submitit == "slurm" else 0.5)
            except KeyboardInterrupt:
                print(f"stopped watching; the jobs keep running: `modbench matrix --slice {args.slice} --launcher "
                      "slurm --collect` waits for them and writes the tables", file=sys.stderr)
                return 130
        elif cfg.jobs == 1 and cfg.processes_per_cell() == 1:
            from modbench.suite.launcher import run_in_process

            run_in_process(todo, cfg.retries, failed)
        else:
            from modbench.suite.launcher import run_in_processes

            run_in_processes(todo, cfg, folder, failed)
        _matrix_tables(args)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    finally:  # listed even when interrupted, or when the tables or plots raise
        _list_failed(failed, len(todo))
    return 1 if failed else 0


def _matrix_data(chosen, root: str) -> None:
    """Fixtures are written for a slice of tiny variants without data; real slices need prepared data."""
    from modbench.tasks.registry import check_data

    try:
        check_data(chosen.tasks, root)
    except FileNotFoundError:
        from modbench import models

        if not all(models.get_variant(v).tiny for v in chosen.variants if v in
                   {c.name for c in models.list_variants()}):
            raise
        from modbench.tasks.fixtures import write_all
        from modbench.tasks.registry import DATA_DIR

        print(f"no benchmark data: writing fixtures to {root or DATA_DIR}", flush=True)
        write_all(Path(root or DATA_DIR))


def _matrix_tables(args) -> None:
    from modbench.suite.tables import write_tables

    written = write_tables(args.output, args.tables)
    print(f"tables: {len(written)} files in {args.tables}")
    if not args.no_plots:
        from modbench.suite.plots import write_plots

        print(f"plots: {len(write_plots(args.output, args.tables))} files in {args.tables}")


def _list_failed(failed: list[str], cells: int) -> None:
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {cells} cell(s) failed", file=sys.stderr)


def _matrix_dry_run(slice_name: str, cfg, todo, folder: Path) -> int:
    """What would run, and nothing else: the sbatch script of the job array (slurm) and each cell's command."""
    from modbench.suite.launcher import cell_argv

    processes = cfg.processes_per_cell()
    if cfg.kind == "slurm":
        from modbench.suite.slurm import sbatch_script

        if not todo:
            print(f"slice {slice_name}: every cell has finished; nothing to submit")
            return 0
        print(sbatch_script(cfg, slice_name, folder, len(todo)))
        print(f"# {len(todo)} cell(s); array task i runs cell i (in the job's process; torchrun when data-parallel),"
              " the equivalent of:")
    for i, spec in enumerate(todo):
        print(f"# {i}: {' '.join(cell_argv(spec, processes))}")
    return 0


def _matrix_status(specs, folder: Path) -> int:
    from modbench.suite.launcher import LaunchState, status_rows
    from tabulate import tabulate

    state = LaunchState.load(folder)
    job_state = None
    if state is not None and state.submitit != "debug":
        from modbench.suite.slurm import job_state as scheduler_state

        job_state = lambda job_id: scheduler_state(state, job_id)  # noqa: E731
    rows = status_rows(specs, state, job_state)
    print(tabulate(rows, headers="keys"))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + f" of {len(rows)} cell(s)")
    return 0


def _matrix_collect(args, cfg, specs, folder: Path) -> int:
    """Wait for a detached submission (resubmitting failed cells while they have attempts left), then the tables;
    without one, the tables of what has run. Non-zero when a cell has not ended ok."""
    from dataclasses import replace

    from modbench.suite.launcher import LaunchState, cell_error, cell_status

    state = LaunchState.load(folder)
    failed: list[str] = []
    watched: set[str] = set()
    try:
        if state is not None:
            from modbench.suite import slurm

            cfg = replace(cfg, submitit=state.submitit)
            mine = [s for s in specs if s.run_id in state.cells]
            watched = {s.run_id for s in mine}
            executor = slurm.make_executor(cfg, args.slice, folder)
            failed += slurm.watch(executor, mine, cfg.processes_per_cell(), state, cfg.retries,
                                  cfg.poll_seconds if state.submitit == "slurm" else 0.5)
        for spec in specs:
            if spec.run_id not in watched and cell_status(spec) != "ok":
                failed.append(f"{spec.run_id}: {cell_status(spec)}: " + cell_error(spec))
        _matrix_tables(args)
    except KeyboardInterrupt:
        print("stopped watching; the jobs keep running (--collect again waits for them)", file=sys.stderr)
        return 130
    finally:
        _list_failed(failed, len(specs))
    return 1 if failed else 0


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
    p.add_argument("--model", required=True, help="variant name or checkpoint directory")
    p.add_argument("--tasks", required=True, help="comma-separated local tasks, e.g. pope_local,gqa_local")
    p.add_argument("--limit", type=int, default=None, help="samples per task")
    p.add_argument("--protocol", default="lmms-eval", choices=["lmms-eval", "llava"])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", default="", choices=["", "float32", "float16", "bfloat16"])
    p.add_argument("--device", default="")
    p.add_argument("--attn-implementation", default="", choices=["", "sdpa", "eager", "flash_attention_2"])
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
    p.add_argument("--matrix", default=None, help="matrix file (default: the checkout's matrix.yaml)")
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

    p = sub.add_parser("flops", help="analytic TFLOPs in the papers' convention (LLM prefill, 2 per MAC)")
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
    p.add_argument("--model", required=True, help="variant name (random weights) or checkpoint directory")
    p.add_argument("--compare", default="", help="a second model, run side by side (ratios printed)")
    p.add_argument("--image-tokens", type=int, default=1024)
    p.add_argument("--prompt-tokens", type=int, default=60)
    p.add_argument("--new-tokens", type=int, default=8, help="forced output length (no early EOS)")
    p.add_argument("--batch-size", default="1", help="one or more, comma-separated (e.g. 1,8)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="", help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default="", choices=["", "float32", "float16", "bfloat16"])
    p.add_argument("--attn-implementation", default="", choices=["", "sdpa", "eager", "flash_attention_2"])
    p.add_argument("--task", default="", help="time the first --limit samples of a local task instead of "
                                              "synthetic shapes")
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
    p.add_argument("--model", help="variant (trained from its seeded random init) or checkpoint directory")
    p.add_argument("--scheme", choices=["dense", "gamma", "pmod"], help="default: the model's own")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mod-layers", dest="mod_layers", help="MoD layers, e.g. 3-30 or 1,2,4")
    group.add_argument("--arank-keep", dest="arank_keep", type=int,
                       help="γ-MoD: every layer but the k highest-ARank ones of the dense model (ARank over "
                            "--arank-samples image samples of the data)")
    group.add_argument("--mod-pattern", dest="mod_pattern", choices=["all", "1of2", "2of3"],
                       help="γ-MoD Table 1 deployments over layers 1..L-2")
    p.add_argument("--arank-samples", dest="arank_samples", type=int)
    p.add_argument("--router", choices=["shared", "per-layer"], help="γ-MoD router (default shared)")
    p.add_argument("--masked", choices=["none", "q", "qa"],
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
    p.add_argument("scope", nargs="?", default="all", choices=["gamma-mod", "pmod", "all"])
    p.add_argument("--preset", default="quick", choices=["micro", "quick", "full"],
                   help="quick: dense, γ-MoD 0.5, p-MoD, 1 seed (~10 min on 2 cores); full: every γ-MoD Table 1 "
                        "row and the p-MoD ablation, 3 seeds; micro: a smoke test")
    p.add_argument("--seeds", type=int, default=None, help="override the preset's number of seeds")
    p.add_argument("--seed", type=int, default=None,
                   help="compute only this seed's stages (0-based) into the stage cache and write no report: one "
                        "job per seed on a cluster, then the same command without --seed writes the report")
    p.add_argument("--output", default="", help="report and records (default results/reproduction/<preset>)")
    p.add_argument("--work", default="", help="stage cache: corpus, checkpoints, runs (default .cache/reproduce/<preset>)")
    p.add_argument("--cpu-isa", default="avx2", choices=["avx2", "native"],
                   help="CPU code paths of torch, MKL and oneDNN: avx2 (default) gives the same numbers on every "
                        "x86-64 machine with AVX2 at the same thread count (the committed results: 2 threads); "
                        "native: the machine's own, faster on AVX-512, numbers differ")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("overhead", help="the suite's own cost per sample: lmms-eval loop + plugin vs the bare model")
    p.add_argument("--model", default="cpu-llava-hr", help="variant name or checkpoint directory")
    p.add_argument("--task", default="gqa_local")
    p.add_argument("--limit", type=int, default=16, help="samples (timed at limit/4 and limit; the slope is reported)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--protocol", default="llava", choices=["lmms-eval", "llava"])
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
