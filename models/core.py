"""The one decoder loop: dense, γ-MoD and p-MoD layers over transformers' Llama building blocks.

Each layer asks the routing scheme which tokens run. The kept tokens of each row are packed (order kept) into a
[B, K] block, run through the layer's attention and MLP, and scattered back; the others pass through (scaled
by the route's `skip_scale`, if any). Every layer keeps its own K/V entries in one transformers Cache (appended
in place: GrowingKVLayer) plus a validity mask, so per-layer, per-row cache lengths may differ and padded rows
stay exact.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers import LlamaConfig
from transformers.cache_utils import Cache, DynamicLayer
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from .config import ModelConfig
from .routing import PAD, RESPONSE, TOKEN_TYPE_NAMES, Route, RoutingContext, build_routing

NUM_TOKEN_TYPES = len(TOKEN_TYPE_NAMES)


def llama_config(cfg: ModelConfig) -> LlamaConfig:
    """The transformers LlamaConfig equivalent of our LLM dims (for the building blocks and parity tests)."""
    llm = cfg.llm
    hf = LlamaConfig(
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_heads,
        num_key_value_heads=llm.num_kv_heads,
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps,
        rope_theta=llm.rope_theta,
        tie_word_embeddings=llm.tie_word_embeddings,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        pad_token_id=None,
    )
    hf._attn_implementation = cfg.attn_implementation
    return hf


class GrowingKVLayer(DynamicLayer):
    """transformers' DynamicLayer, appending in place: a layer's K/V live in a buffer with room for `reserve`
    entries (at most RESERVE_CAP) beyond what its first update brought (generation reserves its new tokens: a
    layer gains at most one entry per decode step), so a decode step writes its slot instead of copying the
    whole cache into a new tensor (DynamicLayer's torch.cat, whose cost grows with the sequence at every step of
    every layer). `keys` / `values` are views of the filled part, holding what the concatenation would
    (generation is bitwise the same: a test). Past the room, the buffer grows by an eighth of its length (at
    least RESERVE_CAP entries): the cache holds at most that much unused memory, never a benchmark's whole
    answer length (MMBench's 1,024 tokens, mostly unused by a one-letter answer, would be gigabytes at 7B)."""

    RESERVE_CAP = 64

    def __init__(self, reserve: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reserve = reserve
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            room = min(self.reserve, self.RESERVE_CAP) if self.key_buffer is None else max(end // 8, self.RESERVE_CAP)
            self.key_buffer = self._grown(self.key_buffer, key_states, end + room)
            self.value_buffer = self._grown(self.value_buffer, value_states, end + room)
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def reset(self) -> None:
        super().reset()
        self.length, self.key_buffer, self.value_buffer = 0, None, None

    def _unsupported(self, *args, **kwargs) -> None:
        # DynamicLayer's versions reassign keys / values and would leave the buffer and its length behind
        raise NotImplementedError("GrowingKVLayer (ModCache) does not crop, reorder or repeat rows")

    crop = reorder_cache = batch_repeat_interleave = batch_select_indices = _unsupported

    def _grown(self, old: torch.Tensor | None, states: torch.Tensor, capacity: int) -> torch.Tensor:
        buffer = states.new_empty((*states.shape[:-2], capacity, states.shape[-1]))
        if old is not None:
            buffer[:, :, :self.length] = old[:, :, :self.length]
        return buffer


class ModCache:
    """K/V per layer (a transformers Cache of GrowingKVLayer) plus which entries are real, per row.

    A slot is invalid when it belongs to a pad token, or to a padded slot of a row that kept fewer tokens
    than another row of the batch in that layer. Positions are derived from these masks, not stored.
    `reserve`: entries each layer will gain after its first update (a generation's new tokens), allocated with it.
    """

    def __init__(self, num_layers: int, batch_size: int, device: torch.device, reserve: int = 0) -> None:
        self.kv = Cache(layer_class_to_replicate=functools.partial(GrowingKVLayer, reserve=reserve))
        self.valid: list[torch.Tensor | None] = [None] * num_layers
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)  # real tokens processed per row

    def layer_lengths(self) -> torch.Tensor:
        """[num_layers, B]: number of real K/V entries each layer holds for each row."""
        return torch.stack([
            v.sum(dim=1) if v is not None else torch.zeros_like(self.seen) for v in self.valid
        ])

    def layer_bytes(self) -> list[int]:
        """Bytes of real K/V entries per layer (all rows), in the cache's dtype."""
        out = []
        for idx, valid in enumerate(self.valid):
            if valid is None or idx >= len(self.kv.layers):
                out.append(0)
                continue
            key = self.kv.layers[idx].keys  # [B, kv_heads, L, head_dim]
            per_entry = 2 * key.shape[1] * key.shape[3] * key.element_size()
            out.append(int(valid.sum()) * per_entry)
        return out


@dataclass
class ModOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    routing_loss: torch.Tensor | None = None
    kept: torch.Tensor | None = None  # [B, num_layers, NUM_TOKEN_TYPES] tokens that ran each layer, by type
    total: torch.Tensor | None = None  # [B, num_layers, NUM_TOKEN_TYPES] tokens seen by each layer, by type
    attentions: list[torch.Tensor | None] = field(default_factory=list)


def _pack(keep: torch.Tensor, kept_per_row: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the indices of kept tokens in order, padded to the widest row: (idx [B, K], valid [B, K]). On
    the meta device, where `keep` has no values, K is the route's `kept_per_row`."""
    if keep.is_meta:
        if kept_per_row is None:
            raise ValueError("a route on the meta device must give kept_per_row (its values are unknown)")
        k = kept_per_row
    else:
        k = int(keep.sum(dim=1).max())
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :k]
    return order, torch.gather(keep, 1, order)


class ModDecoder(nn.Module):
    """embed_tokens, layers, norm: the key names of transformers' LlamaModel, plus the routing scheme."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hf_config = llama_config(cfg)
        self.embed_tokens = nn.Embedding(cfg.llm.vocab_size, cfg.llm.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(self.hf_config, i) for i in range(cfg.llm.num_layers))
        self.norm = LlamaRMSNorm(cfg.llm.hidden_size, eps=cfg.llm.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(self.hf_config)
        self.routing = build_routing(cfg)
        self.gradient_checkpointing = False  # training: recompute each layer in backward instead of storing it

    def _mask(self, full, valid, dtype) -> torch.Tensor | None:
        """Additive [B, 1, K, L_old + K] mask over `full` (the layer's cache validity, `valid` of its K new
        slots last): causal over cache slots, invalid slots hidden. A query always sees its own slot, so padded
        queries stay finite (their outputs are discarded)."""
        if valid.is_meta:  # counting FLOPs (models/flops.py): no values to mask, and a mask adds no matmul
            return None
        batch, k = valid.shape
        old = full.shape[1] - k
        # No mask is needed when causality alone hides every invalid slot from every real query: nothing is
        # invalid and there is no cache (prefill) or one query (a decode step attends to all), or, without a
        # cache, each row's valid slots come first (a right-padded training batch, a packed MoD layer): a real
        # query's predecessors are then all real, and the padded queries after them are discarded.
        trivial = bool(full.all()) and (old == 0 or k == 1) or (
            old == 0 and not bool((valid[:, 1:] & ~valid[:, :-1]).any()))
        impl = self.hf_config._attn_implementation
        if trivial and impl != "eager":
            return None  # let the kernel apply causality (its fused causal path; flash-attention's too)
        if impl == "flash_attention_2":
            raise NotImplementedError(
                "attn_implementation='flash_attention_2' takes no padding mask in this loop: run batch size 1 "
                "(every layer, routed or not, then needs no mask) or use 'sdpa'"
            )
        slots = torch.arange(full.shape[1], device=valid.device)
        own = torch.arange(k, device=valid.device) + old
        allowed = (slots[None, :] <= own[:, None])[None] & full[:, None, :]
        allowed = allowed | (slots[None, :] == own[:, None])[None]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]

    def _run_layer(self, layer_idx, hidden, normed_all, positions, ctx, cache, route: Route | None, want_attn,
                   shared: dict | None = None):
        """One layer. `shared` (one dict per forward): the layers that run every real token see the same cache
        validity (one tensor, set below), mask and rotary table, so the first of them builds them for the rest."""
        layer = self.layers[layer_idx]
        real = ctx.real
        if route is None:
            idx, valid, x, normed = None, real, hidden, normed_all
            pos = positions
        else:
            keep = route.keep & real
            idx, valid = _pack(keep, route.kept_per_row)
            route.keep = keep
            if idx.shape[1] == 0:
                out = hidden if route.skip_scale is None else hidden * route.skip_scale[..., None]
                return out, None
            x = torch.gather(hidden, 1, idx[..., None].expand(-1, -1, hidden.shape[-1]))
            normed = torch.gather(normed_all, 1, idx[..., None].expand(-1, -1, hidden.shape[-1]))
            if route.compact_positions:
                old = cache.valid[layer_idx] if cache is not None else None
                base = old.sum(dim=1) if old is not None else torch.zeros_like(real[:, 0], dtype=torch.long)
                pos = (base[:, None] + valid.long().cumsum(dim=1) - 1).clamp(min=0)
            else:
                pos = torch.gather(positions, 1, idx)
        old_valid = cache.valid[layer_idx] if cache is not None else None
        # the cache validity of every such layer is the one tensor the first stored (or None in a prefill)
        key = id(old_valid) if route is None and shared is not None else None
        if key is not None and key in shared:
            full, mask, cos_sin = shared[key]
        else:
            full = valid if old_valid is None else torch.cat([old_valid, valid], dim=1)
            mask = self._mask(full, valid, hidden.dtype)
            cos_sin = self.rotary_emb(x, pos)
            if key is not None:
                shared[key] = full, mask, cos_sin
        if cache is not None:
            cache.valid[layer_idx] = full
        attn_out, attn_weights = layer.self_attn(
            hidden_states=normed,
            position_embeddings=cos_sin,
            attention_mask=mask,
            past_key_values=cache.kv if cache is not None else None,
        )
        h = x + attn_out
        mlp_out = layer.mlp(layer.post_attention_layernorm(h))
        if route is not None and route.mlp_scale is not None:
            mlp_out = mlp_out * torch.gather(route.mlp_scale, 1, idx)[..., None]
        y = h + mlp_out
        if idx is None:
            return y, attn_weights if want_attn else None
        out = hidden if route.skip_scale is None else hidden * route.skip_scale[..., None]
        if out.is_meta:  # shapes only: the kept tokens' write-back has no values to move
            return out, None
        out = out.clone()
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None].expand_as(idx)
        out[rows[valid], idx[valid]] = y[valid]
        return out, attn_weights if want_attn else None

    def forward(self, inputs_embeds, token_types, cache: ModCache | None = None, collect_stats=False,
                return_attentions=False):
        ctx = RoutingContext(token_types=token_types, training=self.training)
        real = ctx.real
        seen = cache.seen if cache is not None else torch.zeros_like(real[:, 0], dtype=torch.long)
        positions = (seen[:, None] + real.long().cumsum(dim=1) - 1).clamp(min=0)
        hidden = inputs_embeds
        aux_losses, kept, attentions = [], [], []
        type_onehot = F.one_hot(token_types, NUM_TOKEN_TYPES) if collect_stats else None
        shared = {}  # what the layers running every real token share (_run_layer)
        for layer_idx in range(len(self.layers)):
            normed = self.layers[layer_idx].input_layernorm(hidden)
            route = self.routing.route(layer_idx, hidden, normed, ctx)
            if self.gradient_checkpointing and self.training and cache is None:
                hidden, attn = torch.utils.checkpoint.checkpoint(
                    self._run_layer, layer_idx, hidden, normed, positions, ctx, cache, route, return_attentions,
                    use_reentrant=False)
            else:
                hidden, attn = self._run_layer(
                    layer_idx, hidden, normed, positions, ctx, cache, route, return_attentions, shared
                )
            if route is not None and route.aux_loss is not None:
                aux_losses.append(route.aux_loss)
            if collect_stats:
                ran = real if route is None else route.keep
                kept.append((type_onehot * ran[..., None]).sum(dim=1))
            attentions.append(attn)
        if cache is not None:
            cache.seen = seen + real.sum(dim=1)
        hidden = self.norm(hidden)
        routing_loss = torch.stack(aux_losses).sum() if aux_losses else None
        stats = None
        if collect_stats:
            total = (type_onehot * real[..., None]).sum(dim=1)
            stats = (torch.stack(kept, dim=1), total[:, None].expand(-1, len(self.layers), -1))
        return hidden, routing_loss, stats, attentions


class ModForCausalLM(nn.Module):
    """model + lm_head: the key names of transformers' LlamaForCausalLM (routers under model.routing)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = ModDecoder(cfg)
        self.lm_head = nn.Linear(cfg.llm.hidden_size, cfg.llm.vocab_size, bias=False)
        self.tie_weights()
        # a load with assign=True (the checkpoint loader, convert_to_mod) gives the head and the embedding tensors
        # of their own: every load ends tied again
        self.register_load_state_dict_post_hook(lambda module, _keys: module.tie_weights())

    def tie_weights(self) -> None:
        """A tied head shares the embedding's parameter."""
        if self.cfg.llm.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, inputs_embeds=None, token_types=None, input_ids=None, labels=None,
                cache: ModCache | None = None, collect_stats=False, return_attentions=False,
                logits_to_keep: int = 0, logits_at_labels: bool = False) -> ModOutput:
        """logits_at_labels (training): the head runs only where a next-token label is set, and `logits` is then
        [labelled positions, vocab] in row-major order; the loss is the same, at a fraction of the head's and the
        softmax's cost (answers are a small share of an image-heavy sequence)."""
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        if token_types is None:  # a text-only call: every token is a prompt token
            token_types = torch.full(inputs_embeds.shape[:2], 3, dtype=torch.long, device=inputs_embeds.device)
        hidden, routing_loss, stats, attentions = self.model(
            inputs_embeds, token_types, cache, collect_stats, return_attentions
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        if logits_at_labels and labels is not None:
            targets = labels[:, 1:]
            at = targets != -100
            logits = self.lm_head(hidden[:, :-1][at])
            loss_args = (logits.float(), targets[at])
        else:
            logits = self.lm_head(hidden)
            if labels is not None:
                loss_args = (logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        out = ModOutput(logits=logits, routing_loss=routing_loss, attentions=attentions)
        if stats is not None:
            out.kept, out.total = stats
        if labels is not None:
            out.lm_loss = F.cross_entropy(*loss_args, ignore_index=-100)
            out.loss = out.lm_loss if routing_loss is None else out.lm_loss + routing_loss
        return out

    def new_cache(self, batch_size: int, device, reserve: int = 0) -> ModCache:
        return ModCache(self.cfg.llm.num_layers, batch_size, device, reserve)


@contextlib.contextmanager
def eager_attention(model: ModForCausalLM):
    """Temporarily run attention eagerly so that attention maps are returned (ARank needs them)."""
    hf = model.model.hf_config
    before = hf._attn_implementation
    hf._attn_implementation = "eager"
    try:
        yield
    finally:
        hf._attn_implementation = before


class StepClock:
    """Times each generation step (greedy_generate's `clock`): on a GPU with CUDA events after synchronising
    (the profiler's choice: exact, and it stalls the stream), else with perf_counter around the step, which ends
    with a host read of the device's result."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.cuda = torch.device(device or "cpu").type == "cuda"

    @contextlib.contextmanager
    def time(self, out: list[float]):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / 1000.0)
        else:
            start = time.perf_counter()
            yield
            out.append(time.perf_counter() - start)


@torch.no_grad()
def greedy_generate(
    lm: ModForCausalLM,
    inputs_embeds: torch.Tensor,
    token_types: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    min_new_tokens: int = 0,
    use_cache: bool = True,
    collect_stats: bool = False,
    output_scores: bool = False,
    clock: StepClock | None = None,
) -> dict:
    """Greedy decoding for a left-padded batch. use_cache=False recomputes the whole sequence each step
    (the reference for cached decoding). Returns tokens per row (without EOS), each step's seconds (by `clock`;
    step 0 is the prefill) and, if asked, routing stats (summed over the steps, and the prefill's alone)."""
    if use_cache:
        lm.model.routing.check_generation(lm.cfg.llm.num_layers)
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    cache = lm.new_cache(batch, device, reserve=max_new_tokens) if use_cache else None
    embeds, types = inputs_embeds, token_types
    step_in, step_types = embeds, types
    kept = total = None
    scores = []
    seconds: list[float] = []  # per step: [0] is the prefill (time to first token), the rest decode steps
    clock = clock or StepClock()
    prefill_stats = None
    for step in range(max_new_tokens):
        with clock.time(seconds):
            out = lm(inputs_embeds=step_in, token_types=step_types, cache=cache, collect_stats=collect_stats,
                     logits_to_keep=1)
            logits = out.logits[:, -1].float()
            if output_scores:
                scores.append(logits.clone())
            if step < min_new_tokens:
                logits[:, eos_token_id] = -torch.inf
            nxt = logits.argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            tokens.append(nxt)
            done = done | (nxt == eos_token_id)
            finished = bool(done.all())  # a host read: the device has finished this step
            if not (finished or step == max_new_tokens - 1):
                new_embed = lm.model.embed_tokens(nxt)[:, None]  # the next step's input, timed with this step
        if collect_stats:
            kept = out.kept if kept is None else kept + out.kept
            total = out.total if total is None else total + out.total
            prefill_stats = prefill_stats or (out.kept, out.total)
        if finished or step == max_new_tokens - 1:
            break
        # Finished rows keep running (their tokens are dropped) but as pads, so they are not counted.
        new_type = torch.where(done, PAD, RESPONSE)[:, None]
        if use_cache:
            step_in, step_types = new_embed, new_type
        else:
            embeds = torch.cat([embeds, new_embed], dim=1)
            types = torch.cat([types, new_type], dim=1)
            step_in, step_types = embeds, types
    generated = torch.stack(tokens, dim=1) if tokens else torch.empty(batch, 0, dtype=torch.long)
    rows = []
    for row in generated.tolist():
        row = row[: row.index(eos_token_id)] if eos_token_id in row else row
        rows.append(row)
    result = {"tokens": rows, "cache": cache, "prefill_seconds": seconds[0] if seconds else 0.0,
              "decode_seconds": sum(seconds[1:]), "step_seconds": seconds}
    if output_scores:
        result["scores"] = torch.stack(scores, dim=1)  # [B, steps, vocab], before the min_new_tokens mask
    if collect_stats:
        result["kept"], result["total"] = kept, total
        result["prefill_kept"], result["prefill_total"] = prefill_stats or (None, None)  # (no step: None)
    return result
