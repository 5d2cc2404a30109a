"""The lmms-eval model plugin: `--model modbench --model_args pretrained=<variant | checkpoint dir | hub id>,...`.

Registered through the `lmms_eval.models` entry point (pyproject.toml -> models.lmms_manifest) with a
ModelManifest; lmms-eval 0.7.3 does not consult the `@register_model` decorator of out-of-tree models.

model_args: pretrained, dtype, device, batch_size, attn_implementation, protocol (lmms-eval | llava),
records (a JSONL path for our per-sample records, default $MODBENCH_RECORDS, else none; the model as
models.resolver resolved it goes beside them, records.jsonl -> records.model.json), seed, measure_flops
(per sample: torch.utils.flop_counter and fvcore counts of the prefill as it ran, beside the analytic one),
fixed_skip (γ-MoD: skip this share of the routable prompt tokens by top-k instead of the released threshold),
max_new_tokens (a cap on every task's new tokens: for smoke tests of untrained models, which never stop early),
resume (answer a request from its ok record in `records` instead of running the model: sample-level resume),
random_init (a variant with a hub id, which otherwise stands for its released checkpoint in the local HF cache:
its config with seeded random weights).

A sample whose generation raises, or whose logits or router probabilities hold NaN / inf, is recorded as failed
(with the reason) and never returned as an answer: after the whole request list has run, generate_until raises,
so the task fails instead of scoring it.

Resume: every ok record carries `key`, a hash of the model identity and the request (task, split, doc id,
context, generation kwargs). Records are appended per batch, so a run killed mid-way keeps every finished
sample; with resume=true those are answered from their records and only the rest run. lmms-eval's own
response cache (`use_cache`) is not enough for this: `ResponseCache.execute` stores responses only after the
whole request list has returned, and keeps a killed process's shard unmerged, so a run killed mid-way
recomputes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from lmms_eval.api.model import lmms

from .config import PROTOCOLS
from .prompt import task_sample
from .routing import TOKEN_TYPE_NAMES

# PROTOCOLS (modbench.models.config): lmms-eval: the task YAML's generation kwargs; llava: the γ-MoD / LLaVA-HR
# evaluation scripts (greedy, the answer length registered per benchmark in tasks/benchmarks.py).


class SampleFailures(RuntimeError):
    """Some samples failed to generate; they are recorded, not scored."""


def model_record_path(records: Path) -> Path:
    """Where the plugin records the resolved model beside its per-sample records (records.jsonl ->
    records.model.json; one file for all ranks, written by rank 0)."""
    return records.with_suffix(".model.json")


def resume_records(path: Path) -> dict[str, dict]:
    """The ok records of an interrupted attempt, by key; rewrites `path` without the rest (failed samples run
    again, and a line torn by a kill mid-write is dropped, so appends stay whole lines)."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    kept: dict[str, dict] = {}
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # only the last line can be torn (one appending writer)
                continue
            raise ValueError(f"{path}: line {n + 1} is not JSON (not a records file of this plugin?)") from None
        if row.get("status") == "ok" and row.get("key") and row["key"] not in kept:
            kept[row["key"]] = row
    tmp = path.with_name(f".{path.name}.tmp")  # renamed into place: a kill now leaves the old file whole
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept.values()))
    os.replace(tmp, path)
    return kept


class _NonFiniteProbe:
    """While generating one batch: per row, which forward steps gave non-finite logits and which MoD layers
    gave non-finite router probabilities on real tokens. A NaN router routes nothing and still answers, so the
    logits alone would not show it. Flags stay on the device until the batch ends (no sync per step)."""

    def __init__(self, model) -> None:
        self.lm = model.language_model
        self.logits: list[torch.Tensor] = []  # per forward: [B] bool, every logit finite
        self.routers: list[tuple[int, torch.Tensor]] = []  # per routed layer call: (layer, [B] bool)

    def __enter__(self) -> "_NonFiniteProbe":
        routing = self.lm.model.routing
        original = routing.route

        def route(layer_idx, hidden, normed, ctx):
            decision = original(layer_idx, hidden, normed, ctx)
            if decision is not None:
                scales = {id(s): s for s in (decision.mlp_scale, decision.skip_scale) if s is not None}
                for scale in scales.values():  # γ-MoD: p; p-MoD: the TanhNorm weight
                    self.routers.append((layer_idx, (torch.isfinite(scale) | ~ctx.real).all(dim=1)))
            return decision

        routing.route = route  # an instance attribute over the method, removed on exit
        self._hook = self.lm.lm_head.register_forward_hook(
            lambda module, args, out: self.logits.append(torch.isfinite(out).flatten(1).all(dim=1)))
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        del self.lm.model.routing.route

    def reasons(self, steps_per_row: list[int]) -> list[str | None]:
        """Per row: why it must not be scored, or None. `steps_per_row`: the forward steps that produced the
        row's tokens (a finished row runs on as a pad; its later steps do not count)."""
        logits = torch.stack(self.logits).cpu().tolist() if self.logits else []
        routers = [(layer, finite.cpu().tolist()) for layer, finite in self.routers]
        out = []
        for row, steps in enumerate(steps_per_row):
            bad_step = next((s for s in range(min(steps, len(logits))) if not logits[s][row]), None)
            bad_layer = next((layer for layer, finite in routers if not finite[row]), None)
            reason = []
            if bad_layer is not None:
                reason.append(f"non-finite router probabilities (NaN/inf) at layer {bad_layer}")
            if bad_step is not None:
                reason.append(f"non-finite logits (NaN/inf) at generation step {bad_step}")
            out.append("; ".join(reason) or None)
        return out


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # renamed into place: a reader never sees half a file
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


class ModbenchLmms(lmms):
    is_simple = True

    def __init__(self, pretrained: str = "tiny-llava", dtype: str = "", device: str = "", batch_size=1,
                 attn_implementation: str = "", protocol: str = "lmms-eval", records: str = "", seed=0,
                 measure_flops=False, fixed_skip="", max_new_tokens="", resume=False, random_init=False,
                 **unknown) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"modbench model_args: unknown key(s) {sorted(unknown)}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"modbench model_args: protocol must be one of {PROTOCOLS}, got {protocol!r}")
        from .resolver import build, resolve

        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        if not device:
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        # fixed_skip: a γ-MoD benchmark knob (a controlled skip ratio instead of the released threshold rule)
        self.resolved = resolve(str(pretrained), {
            "dtype": dtype or None, "attn_implementation": attn_implementation or None,
            "mod.fixed_skip": None if fixed_skip in ("", None) else float(fixed_skip)}, random_init=_bool(random_init))
        self.model = build(self.resolved, seed=int(seed), device=device)
        self.pretrained = pretrained
        self.protocol = protocol
        self.measure_flops = _bool(measure_flops)
        self.max_new_tokens_cap = None if max_new_tokens in ("", None) else int(max_new_tokens)
        if self.max_new_tokens_cap is not None and self.max_new_tokens_cap < 1:
            raise ValueError(f"modbench model_args: max_new_tokens must be at least 1, got {max_new_tokens!r}")
        self.batch_size_per_gpu = int(batch_size)
        path = records or os.environ.get("MODBENCH_RECORDS", "")
        if path and self._rank == 0:  # the suite reads the model from here instead of resolving it again
            _write_json(model_record_path(Path(path)), self.resolved.to_record())
        if path and self._world_size > 1:
            path = f"{path}.rank{self._rank}"
        self.records_path = Path(path) if path else None
        if _bool(resume) and self.records_path is None:
            raise ValueError("modbench model_args: resume needs records (the file an interrupted attempt wrote)")
        self.resumed = resume_records(self.records_path) if _bool(resume) else {}
        # What a record's answer depends on besides the request: a record of another model never matches.
        cfg = self.model.cfg
        self._identity = json.dumps([pretrained, protocol, cfg.dtype, cfg.attn_implementation, int(seed),
                                     cfg.mod.fixed_skip, str(self.model.device), self.max_new_tokens_cap]
                                    + (["random_init"] if _bool(random_init) else []))

    # lmms-eval reads these
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def _doc(self, task, split, doc_id):
        return self.task_dict[task][split][doc_id]

    def _sample(self, context: str, doc_to_visual, task, split, doc_id) -> tuple[str, object]:
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else []
        return task_sample(context, visuals, f"{task} doc {doc_id}")

    def _max_new_tokens(self, task: str, gen_kwargs: dict) -> int:
        if self.protocol == "llava":
            from modbench.tasks.benchmarks import SHORT_ANSWER_TOKENS, benchmark_of_task

            benchmark = benchmark_of_task(task)
            wanted = SHORT_ANSWER_TOKENS if benchmark is None else benchmark.llava_max_new_tokens
        else:
            wanted = int(gen_kwargs.get("max_new_tokens", 32))
        return wanted if self.max_new_tokens_cap is None else min(wanted, self.max_new_tokens_cap)

    def _record(self, rows: list[dict]) -> None:
        if self.records_path is None:
            return
        self.records_path.parent.mkdir(parents=True, exist_ok=True)
        with self.records_path.open("a") as handle:  # one write: a kill tears at most the last line
            handle.write("".join(json.dumps(row) + "\n" for row in rows))

    def _key(self, args) -> str:
        context, gen_kwargs, _, doc_id, task, split = args
        raw = json.dumps([self._identity, task, split, doc_id, context, gen_kwargs], sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()

    def generate_until(self, requests) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        failures = []
        keys = [self._key(r.args) for r in requests]
        for i, key in enumerate(keys):  # finished in an interrupted attempt: its record holds the answer
            if key in self.resumed:
                answers[i] = self.resumed[key]["answer"]
        order = sorted((i for i in range(len(requests)) if answers[i] is None),
                       key=lambda i: (requests[i].args[4], -len(requests[i].args[0])))
        groups: dict[tuple, list[int]] = {}
        for i in order:  # batch only requests of one task with the same generation kwargs
            context, gen_kwargs, _, _, task, _ = requests[i].args
            key = (task, json.dumps(gen_kwargs, sort_keys=True, default=str))
            groups.setdefault(key, []).append(i)
        progress = _progress(len(requests), disable=self.rank != 0)
        progress.update(len(requests) - len(order))
        for (task, _), indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                self._generate_chunk(requests, chunk, answers, failures, keys)
                progress.update(len(chunk))
        progress.close()
        if failures:
            raise SampleFailures(f"{len(failures)} sample(s) failed (recorded, not scored): {failures[:5]}")
        return answers

    def _fail(self, failures, rows, a, key, error: str) -> None:
        failures.append({"task": a[4], "doc_id": a[3], "error": error})
        rows.append({"task": a[4], "doc_id": a[3], "key": key, "status": "failed", "error": error,
                     "model": self.pretrained})

    def _generate_chunk(self, requests, chunk, answers, failures, keys) -> None:
        args = [requests[i].args for i in chunk]
        task, gen_kwargs = args[0][4], args[0][1]
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = self._max_new_tokens(task, gen_kwargs)
        try:
            prompts, images = map(list, zip(*(self._sample(a[0], a[2], a[4], a[5], a[3]) for a in args)))
            with _NonFiniteProbe(self.model) as probe:
                out = self.model.generate(prompts, images, max_new_tokens=max_new, collect_stats=True)
            # steps that produced each row's tokens: one per token, plus the one that produced its EOS
            non_finite = probe.reasons([len(t) + 1 for t in out["tokens"]])
        except Exception as exc:
            if len(chunk) > 1:  # find the failing sample(s): run them one by one
                for i in chunk:
                    self._generate_chunk(requests, [i], answers, failures, keys)
                return
            rows: list[dict] = []
            self._fail(failures, rows, args[0], keys[chunk[0]], f"{type(exc).__name__}: {exc}")
            self._record(rows)
            return
        rows = []
        for j, (i, a) in enumerate(zip(chunk, args)):
            if non_finite[j]:  # never an answer: a NaN model must not read as a bad one
                self._fail(failures, rows, a, keys[i], non_finite[j])
                continue
            text = out["text"][j]
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            answers[i] = text
            kept, total = out["kept"][j], out["total"][j]
            rows.append({
                "task": a[4], "doc_id": a[3], "key": keys[i], "status": "ok", "model": self.pretrained,
                "protocol": self.protocol,
                "answer": text, "prompt_tokens": out["prompt_lengths"][j], "image_tokens": out["image_tokens"][j],
                "generated_tokens": len(out["tokens"][j]), "batch_size": len(chunk),
                "prefill_seconds_batch": out["prefill_seconds"], "decode_seconds_batch": out["decode_seconds"],
                "kept_per_layer": {name: kept[:, t].tolist() for t, name in enumerate(TOKEN_TYPE_NAMES) if t},
                "seen_per_layer": {name: total[:, t].tolist() for t, name in enumerate(TOKEN_TYPE_NAMES) if t},
            })
            self.cache_hook.add_partial("generate_until", (a[0], a[1]), text)
            if self.measure_flops:  # one more prefill per sample, alone, under the counters
                from .flops import measure_sample_flops

                rows[-1]["flops"] = measure_sample_flops(self.model, prompts[j], images[j], fvcore=True)
        self._record(rows)

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results, failures, rows = [], [], []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            target = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self._doc(task, split, doc_id))
            prompt, image = self._sample(context, doc_to_visual, task, split, doc_id)
            batch = self.model.build_batch([prompt], [image], answers=[target])
            with _NonFiniteProbe(self.model) as probe:
                out = self.model.language_model(inputs_embeds=batch.inputs_embeds, token_types=batch.token_types,
                                                labels=batch.labels)
            non_finite = probe.reasons([1])[0]
            if non_finite:  # recorded, and the task fails below instead of scoring a NaN likelihood
                self._fail(failures, rows, (context, None, None, doc_id, task, split), "", non_finite)
                results.append((float("nan"), False))
                continue
            labels = batch.labels[0, 1:]
            mask = labels != -100
            mask[mask.nonzero()[-1]] = False  # the EOS our answers end with is not part of the continuation
            logprobs = out.logits[0, :-1].float().log_softmax(dim=-1)
            picked = logprobs[mask].gather(1, labels[mask][:, None]).squeeze(1)
            greedy = bool((logprobs[mask].argmax(dim=-1) == labels[mask]).all())
            results.append((float(picked.sum()), greedy))
        self._record(rows)
        if failures:
            raise SampleFailures(f"{len(failures)} sample(s) failed (recorded, not scored): {failures[:5]}")
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("modbench: multi-round generation is not supported (the papers' benchmarks are "
                                  "single-round)")


def _progress(total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=disable, desc="modbench generate")
