"""γ-MoD against its dense host at the papers' shape on a GPU, with random weights: vision, prefill and per-token
decode timed by modbench.suite.latency (CUDA events, warm-up, repeats, median and spread), the γ-MoD model at a
controlled skip (mod.fixed_skip: the share of routable tokens each MoD layer skips), since untrained routers
skip what chance gives. The speed of a layout, not of the released models: their routers skip what they
learnt.

    python scripts/gpu_latency.py [--gamma llava-hr-7b-gmod-0.5] [--dense llava-hr-7b] [--skip 0.5]
                                  [--batch-size 1,8] [--new-tokens 16] [--output FILE]

Each model is built once, directly on the device (a variant with a hub id stands for its released checkpoint
elsewhere in the suite; here its config is taken without the hub id)."""

from __future__ import annotations

import argparse
import dataclasses
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gamma", default="llava-hr-7b-gmod-0.5")
    parser.add_argument("--dense", default="llava-hr-7b")
    parser.add_argument("--skip", type=float, default=0.5)
    parser.add_argument("--batch-size", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--output", default="")
    args = parser.parse_args()

    import torch

    from modbench import models
    from modbench.suite.latency import LatencySpec, measure_latency
    from modbench.suite.results import environment, write_json_atomic
    from modbench.tasks.fixtures import sample_prompts

    spec = LatencySpec(new_tokens=args.new_tokens, repeats=args.repeats)
    batches = [int(b) for b in args.batch_size.split(",")]
    image = sample_prompts()[0][1]
    runs, table = [], []
    for name in (args.dense, args.gamma):
        cfg = dataclasses.replace(models.get_variant(name), hub_id="", dtype=args.dtype)
        if cfg.mod.scheme == "gamma":
            cfg = dataclasses.replace(cfg, mod=dataclasses.replace(cfg.mod, fixed_skip=args.skip))
        with torch.device(args.device):  # initialised where it runs: a 7B model's CPU init takes minutes
            model = models.build_model(cfg, device=args.device)
        for batch in batches:
            result = measure_latency(model, dataclasses.replace(spec, batch_size=batch), image=image)
            result.update(model=name, fixed_skip=cfg.mod.fixed_skip)
            runs.append(result)
            sec = result["seconds"]
            table.append({"model": name, "batch": batch, "prefill_ms": 1e3 * sec["prefill"]["median"],
                          "prefill_p10_p90_ms": [1e3 * sec["prefill"]["p10"], 1e3 * sec["prefill"]["p90"]],
                          "decode_ms_per_token": 1e3 * sec["decode_per_token"]["median"],
                          "vision_ms": 1e3 * sec["vision_encode"]["median"] if "vision_encode" in sec else None,
                          "samples_per_s": result["samples_per_s"], "skip": result["routing"]["overall_skip"],
                          "tflops_prefill": result["flops_analytic"]["tflops"]})
            print(json.dumps(table[-1]), flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    ratios = []
    for batch in batches:
        dense, gamma = [row for row in table if row["batch"] == batch]
        ratios.append({"batch": batch, "prefill_speedup": dense["prefill_ms"] / gamma["prefill_ms"],
                       "decode_speedup": dense["decode_ms_per_token"] / gamma["decode_ms_per_token"],
                       "throughput_ratio": gamma["samples_per_s"] / dense["samples_per_s"],
                       "tflops_ratio": gamma["tflops_prefill"] / dense["tflops_prefill"]})
        print(json.dumps(ratios[-1]), flush=True)
    record = {"schema_version": "1.0", "kind": "gpu_latency", "spec": {**vars(args), **dataclasses.asdict(spec)},
              "environment": environment(), "runs": runs, "table": table, "ratios": ratios}
    if args.output:
        write_json_atomic(args.output, record)


if __name__ == "__main__":
    main()
