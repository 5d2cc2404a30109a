"""The lmms-eval model plugin: `--model modbench --model_args pretrained=<variant | checkpoint dir>,...`.

Registered through the `lmms_eval.models` entry point (pyproject.toml -> models.lmms_manifest) with a
ModelManifest; lmms-eval 0.7.3 does not consult the `@register_model` decorator of out-of-tree models.

model_args: pretrained, dtype, device, batch_size, attn_implementation, protocol (lmms-eval | llava),
records (a JSONL path for our per-sample records; default $MODBENCH_RECORDS, else none), seed, measure_flops
(per sample: torch.utils.flop_counter and fvcore counts of the prefill as it ran, beside the analytic one),
fixed_skip (γ-MoD: skip this share of the routable prompt tokens by top-k instead of the released threshold).

A sample whose generation raises is recorded as failed (with the error) and never returned as an answer:
after the whole request list has run, generate_until raises, so the task fails instead of scoring it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lmms_eval.api.model import lmms

from .prompt import task_prompt
from .routing import TOKEN_TYPE_NAMES

PROTOCOLS = ("lmms-eval", "llava")
# The γ-MoD / LLaVA-HR evaluation scripts: greedy, max_new_tokens by answer kind.
LLAVA_MAX_NEW_TOKENS = (("scienceqa", 1), ("mmmu", 1), ("mmvet", 64), ("mm_vet", 64), ("mmbench", 1024))
LLAVA_DEFAULT_MAX_NEW_TOKENS = 6


class SampleFailures(RuntimeError):
    """Some samples failed to generate; they are recorded, not scored."""


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


class ModbenchLmms(lmms):
    is_simple = True

    def __init__(self, pretrained: str = "tiny-llava", dtype: str = "", device: str = "", batch_size=1,
                 attn_implementation: str = "", protocol: str = "lmms-eval", records: str = "", seed=0,
                 measure_flops=False, fixed_skip="", **unknown) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"modbench model_args: unknown key(s) {sorted(unknown)}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"modbench model_args: protocol must be one of {PROTOCOLS}, got {protocol!r}")
        import models

        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        if not device:
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        is_variant = any(cfg.name == pretrained for cfg in models.list_variants())
        if is_variant:
            cfg = models.get_variant(pretrained)
            if dtype:
                cfg.dtype = dtype
            if attn_implementation:
                cfg.attn_implementation = attn_implementation
            models.config.validate(cfg)
            self.model = models.build_model(cfg, seed=int(seed), device=device)
        else:
            self.model = models.load(pretrained, dtype=dtype or None, device_map=device)
            if attn_implementation:
                self.model.cfg.attn_implementation = attn_implementation
                self.model.language_model.model.hf_config._attn_implementation = attn_implementation
        if fixed_skip not in ("", None):  # γ-MoD benchmark knob: a controlled skip ratio (ModSpec.fixed_skip)
            if self.model.cfg.mod.scheme != "gamma":
                raise ValueError(f"modbench model_args: fixed_skip applies to γ-MoD models, not "
                                 f"{self.model.cfg.mod.scheme!r}")
            self.model.cfg.mod.fixed_skip = float(fixed_skip)
            models.config.validate(self.model.cfg)
        self.pretrained = pretrained
        self.protocol = protocol
        self.measure_flops = _bool(measure_flops)
        self.batch_size_per_gpu = int(batch_size)
        path = records or os.environ.get("MODBENCH_RECORDS", "")
        if path and self._world_size > 1:
            path = f"{path}.rank{self._rank}"
        self.records_path = Path(path) if path else None

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

    def _visuals(self, doc_to_visual, task, split, doc_id):
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) > 1:
            raise ValueError(f"{task} doc {doc_id}: {len(visuals)} images; the LLaVA hosts take one per sample")
        return visuals[0].convert("RGB") if visuals else None

    def _prompt(self, context: str, image) -> str:
        return task_prompt(context, image is not None)

    def _max_new_tokens(self, task: str, gen_kwargs: dict) -> int:
        if self.protocol == "llava":
            return next((n for prefix, n in LLAVA_MAX_NEW_TOKENS if task.startswith(prefix)),
                        LLAVA_DEFAULT_MAX_NEW_TOKENS)
        return int(gen_kwargs.get("max_new_tokens", 32))

    def _record(self, rows: list[dict]) -> None:
        if self.records_path is None:
            return
        self.records_path.parent.mkdir(parents=True, exist_ok=True)
        with self.records_path.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")

    def generate_until(self, requests) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        failures = []
        order = sorted(range(len(requests)), key=lambda i: (requests[i].args[4], -len(requests[i].args[0])))
        groups: dict[tuple, list[int]] = {}
        for i in order:  # batch only requests of one task with the same generation kwargs
            context, gen_kwargs, _, _, task, _ = requests[i].args
            key = (task, json.dumps(gen_kwargs, sort_keys=True, default=str))
            groups.setdefault(key, []).append(i)
        progress = _progress(len(requests), disable=self.rank != 0)
        for (task, _), indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                self._generate_chunk(requests, chunk, answers, failures)
                progress.update(len(chunk))
        progress.close()
        if failures:
            raise SampleFailures(f"{len(failures)} sample(s) failed (recorded, not scored): {failures[:5]}")
        return answers

    def _generate_chunk(self, requests, chunk, answers, failures) -> None:
        args = [requests[i].args for i in chunk]
        task, gen_kwargs = args[0][4], args[0][1]
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = self._max_new_tokens(task, gen_kwargs)
        try:
            images = [self._visuals(a[2], a[4], a[5], a[3]) for a in args]
            prompts = [self._prompt(a[0], image) for a, image in zip(args, images)]
            out = self.model.generate(prompts, images, max_new_tokens=max_new, collect_stats=True)
        except Exception as exc:
            if len(chunk) > 1:  # find the failing sample(s): run them one by one
                for i in chunk:
                    self._generate_chunk(requests, [i], answers, failures)
                return
            a = args[0]
            failures.append({"task": a[4], "doc_id": a[3], "error": f"{type(exc).__name__}: {exc}"})
            self._record([{"task": a[4], "doc_id": a[3], "status": "failed",
                           "error": f"{type(exc).__name__}: {exc}", "model": self.pretrained}])
            return
        rows = []
        for j, (i, a) in enumerate(zip(chunk, args)):
            text = out["text"][j]
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            answers[i] = text
            kept, total = out["kept"][j], out["total"][j]
            rows.append({
                "task": a[4], "doc_id": a[3], "status": "ok", "model": self.pretrained, "protocol": self.protocol,
                "answer": text, "prompt_tokens": out["prompt_lengths"][j], "image_tokens": out["image_tokens"][j],
                "generated_tokens": len(out["tokens"][j]), "batch_size": len(chunk),
                "prefill_seconds_batch": out["prefill_seconds"], "decode_seconds_batch": out["decode_seconds"],
                "kept_per_layer": {name: kept[:, t].tolist() for t, name in enumerate(TOKEN_TYPE_NAMES) if t},
                "seen_per_layer": {name: total[:, t].tolist() for t, name in enumerate(TOKEN_TYPE_NAMES) if t},
            })
            self.cache_hook.add_partial("generate_until", (a[0], a[1]), text)
            if self.measure_flops:  # one more prefill per sample, alone, under the counters
                from suite.flops import measure_sample_flops

                rows[-1]["flops"] = measure_sample_flops(self.model, prompts[j], images[j], fvcore=True)
        self._record(rows)

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            target = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self._doc(task, split, doc_id))
            image = self._visuals(doc_to_visual, task, split, doc_id)
            batch = self.model.build_batch([self._prompt(context, image)], [image], answers=[target])
            out = self.model.language_model(inputs_embeds=batch.inputs_embeds, token_types=batch.token_types,
                                            labels=batch.labels)
            labels = batch.labels[0, 1:]
            mask = labels != -100
            mask[mask.nonzero()[-1]] = False  # the EOS our answers end with is not part of the continuation
            logprobs = out.logits[0, :-1].float().log_softmax(dim=-1)
            picked = logprobs[mask].gather(1, labels[mask][:, None]).squeeze(1)
            greedy = bool((logprobs[mask].argmax(dim=-1) == labels[mask]).all())
            results.append((float(picked.sum()), greedy))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("modbench: multi-round generation is not supported (the papers' benchmarks are "
                                  "single-round)")


def _progress(total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=disable, desc="modbench generate")
