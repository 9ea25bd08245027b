"""Which attention heads push the refusal score down, and by how much.

Yin et al. 2025 rank heads by their *direct* contribution to the probe score at the last token
(``find_refusal_head``: the head's output through W_O, dotted with the probe direction), and check
them *causally* by ablating one head at a time and measuring the probe again. Here:

* **direct**: head h of layer l < L* (the direction's layer) writes ``z_h W_O[h]`` into the
  residual stream; its direct contribution to the refusal score is ``(z_h W_O[h]) . r̂`` at the
  decision token. On models that add block outputs to the residual as they are (Llama, Qwen,
  GPT-2, NeoX), the direct terms of all heads plus the rest (embedding, MLPs, output biases) sum
  to the projection of ``resid_pre`` at L* (``additive``); on models that normalise a block's
  output before adding it (Gemma 2/3) the term is measured before that norm and the causal column
  is the one to trust.
* **causal**: zero-ablate the head (``HeadAblation``, z = 0 at every position) and measure the
  projection at the decision token again; ``causal = ablated - baseline`` (positive: the head was
  holding refusal down). Yin et al. scale z by 0.001 and renormalise the attention output; we zero.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from posbench.interventions.head_ablation import HeadAblation
from posbench.progress import NO_PROGRESS, Progress

from .trace import TracedSequence, TraceOutput, decision_projections

if TYPE_CHECKING:  # pragma: no cover
    from posbench.model import HookedModel

    from .direction import RefusalDirection

ADDITIVE_TOLERANCE = 1e-3  # relative error of the residual sum below which a model is additive


def attribution_table(outputs: Sequence[TraceOutput], n_heads: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Mean and standard deviation over items of each head's direct contribution, and the sum
    check: the mean projection (``total``), the mean sum of the heads' direct terms (``heads``),
    the largest relative error of embedding + attention + MLP outputs against the projection
    (``residual_error``), and whether the residual stream is additive."""
    stack = np.stack([o.head_direct for o in outputs])  # [n, L*, H]
    rows = []
    for layer in range(stack.shape[1]):
        for head in range(n_heads):
            values = stack[:, layer, head]
            rows.append({"layer": layer, "head": head, "direct": float(values.mean()),
                         "direct_sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan})
    heads_sum = stack.sum(axis=(1, 2))
    total = np.array([o.projection_at_decision for o in outputs])
    parts = np.array([o.embed + o.attn.sum() + o.mlp.sum() for o in outputs])
    scale = max(float(np.abs(total).max()), 1.0)
    check = {
        "total": float(total.mean()),
        "heads": float(heads_sum.mean()),
        "residual_error": float(np.abs(total - parts).max() / scale),
    }
    check["additive"] = check["residual_error"] < ADDITIVE_TOLERANCE
    return pd.DataFrame(rows, columns=["layer", "head", "direct", "direct_sd"]), check


def causal_effects(
    model: "HookedModel", sequences: Sequence[TracedSequence], direction: "RefusalDirection",
    heads: Sequence[tuple[int, int]], *, batch_size: int = 8, progress: Progress = NO_PROGRESS,
) -> dict[tuple[int, int], float]:
    """Mean change of the decision-token projection when each head alone is zero-ablated."""
    base = decision_projections(model, sequences, direction, batch_size=batch_size)
    out = {}
    for head in heads:
        with model.intervene(HeadAblation([head])):
            out[head] = float((decision_projections(model, sequences, direction, batch_size=batch_size) - base).mean())
        progress.update(1)
    return out


def suppressors(heads: pd.DataFrame, fraction: float, n_heads_total: int, by: str = "direct") -> list[tuple[int, int]]:
    """The ``round(fraction x all heads)`` heads (at least one) that push refusal down most:
    the most negative direct contributions (``by="direct"``), or the largest rises of the score
    when ablated (``by="causal"``, among the heads with a causal measurement). Only heads that do
    push it down qualify, so fewer may come back."""
    n = max(1, round(fraction * n_heads_total))
    if by == "causal":
        pool = heads.dropna(subset=["causal"])
        pool = pool[pool.causal > 0].sort_values("causal", ascending=False)
    else:
        pool = heads[heads.direct < 0].sort_values("direct")
    return [(int(r.layer), int(r["head"])) for _, r in pool.head(n).iterrows()]
