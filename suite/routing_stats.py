"""Routing statistics: per-layer skip ratio by token type (γ-MoD Fig. 4a) and the overall skip ratio."""

from __future__ import annotations

import torch

from modbench.models.routing import PAD, TOKEN_TYPE_NAMES, scheme_class


def routing_summary(kept: torch.Tensor, total: torch.Tensor, cfg) -> dict:
    """kept, total: [layers, token types] counts summed over samples (prefill tokens).

    skip ratio = skipped / seen; `overall_skip` is over the MoD layers only, as the papers' skip columns.
    """
    kept, total = kept.double(), total.double()
    mod_layers = _mod_layers(cfg, total.shape[0])
    per_layer = []
    for layer in range(total.shape[0]):
        row = {"layer": layer, "mod": layer in mod_layers,
               "skip": float(1 - kept[layer].sum() / total[layer].sum()) if total[layer].sum() > 0 else 0.0}
        for t, name in enumerate(TOKEN_TYPE_NAMES):
            if t != PAD and total[layer, t] > 0:
                row[f"skip_{name}"] = float(1 - kept[layer, t] / total[layer, t])
        per_layer.append(row)
    if mod_layers:
        idx = torch.tensor(mod_layers)
        overall = float(1 - kept[idx].sum() / total[idx].sum())
    else:
        overall = 0.0
    return {"per_layer": per_layer, "mod_layers": mod_layers, "overall_skip": overall,
            "kept_share_all_layers": float(kept.sum() / total.sum()) if total.sum() > 0 else 1.0}


def _mod_layers(cfg, num_layers: int) -> list[int]:
    return scheme_class(cfg.mod.scheme).mod_layers_of(cfg.mod, num_layers)
