"""ARank (attention-map rank), γ-MoD's criterion for which layers become MoD layers.

Per layer: the attention maps of one prefill, per head, lower triangle with the diagonal zeroed, in float32,
-> torch.linalg.matrix_rank (default tolerance) -> mean over heads; then the mean over samples. Layers whose
ARank is below the k-th largest value (k = 4 in the paper) become MoD layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .core import eager_attention


def arank_of_maps(attention: torch.Tensor) -> float:
    """ARank of one layer for one sample. attention: [heads, S, S] (or [S, S])."""
    if attention.dim() == 2:
        attention = attention[None]
    lower = torch.tril(attention.float(), diagonal=-1)
    return float(torch.linalg.matrix_rank(lower).float().mean())


def select_mod_layers(aranks: list[float], num_dense: int = 4, always_dense: tuple[int, ...] = ()) -> list[int]:
    """Layers whose ARank is strictly below the `num_dense`-th largest value (ties stay dense), among the
    layers not in `always_dense`."""
    candidates = [i for i in range(len(aranks)) if i not in always_dense]
    if not 1 <= num_dense <= len(candidates):
        raise ValueError(f"num_dense = {num_dense} must be in [1, {len(candidates)}]")
    threshold = sorted((aranks[i] for i in candidates), reverse=True)[num_dense - 1]
    return [i for i in candidates if aranks[i] < threshold]


@dataclass
class ArankResult:
    per_layer: list[float]
    mod_layers: list[int]
    num_samples: int

    def to_dict(self) -> dict:
        return {"per_layer": self.per_layer, "mod_layers": self.mod_layers, "num_samples": self.num_samples}


@torch.no_grad()
def compute_arank(model, samples: list[tuple[str, object]], num_dense: int = 4) -> ArankResult:
    """ARank of every layer of `model` (a ModVlm; meant for the dense stage-1 model) over (prompt, image)
    samples, one prefill each (batch 1, so no padding enters the maps)."""
    if not samples:
        raise ValueError("samples: ARank needs at least one sample")
    num_layers = model.cfg.llm.num_layers
    sums = [0.0] * num_layers
    with eager_attention(model.language_model):
        for prompt, image in samples:
            out = model([prompt], [image], return_attentions=True)
            for layer, maps in enumerate(out.attentions):
                sums[layer] += arank_of_maps(maps[0])
    per_layer = [value / len(samples) for value in sums]
    return ArankResult(per_layer, select_mod_layers(per_layer, num_dense), len(samples))
