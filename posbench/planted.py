"""Models with planted mechanisms: ground truth for probes.

Each function edits a loaded model's weights in place so that a chosen head implements a known
mechanism exactly; a probe is correct only if it finds that head and no other.
"""

from __future__ import annotations

import math

import torch

from .errors import PosbenchError
from .model import HookedModel


def _llama_parts(model: HookedModel, layer: int):
    hf = model.hf_model
    inner = getattr(hf, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner.layers[layer], "self_attn"):
        raise PosbenchError("planting needs a Llama-family model (e.g. tiny-llama)")
    attn = inner.layers[layer].self_attn
    return inner.embed_tokens.weight, attn.q_proj.weight, attn.k_proj.weight


@torch.no_grad()
def plant_first_token_head(model: HookedModel, head: int, strength: float = 1.5) -> None:
    """Make layer-0 query head ``head`` attend to the BOS token (position 0) from every query.

    Residual dim 0 marks BOS (1 on BOS, 0 elsewhere); dim 1 is a constant 0.5 on every token.
    The head's query reads dim 1 and its key reads dim 0, both in the lowest-frequency rotary
    pair (HF rotate-half layout: dims j and j + d/2), whose rotation is negligible over a few
    hundred tokens, so the score is large on BOS and zero on every other key. The other query
    heads sharing the key/value head (GQA) are blinded to that pair so they stay unaffected.
    """
    if model.card.position_encoding != "rope" or not model.card.adds_bos:
        raise PosbenchError("plant_first_token_head needs a RoPE model whose tokenizer adds BOS")
    embed, w_q, w_k = _llama_parts(model, 0)
    d = model.d_head
    pair = d // 2 - 1  # lowest frequency: inv_freq[-1]
    bos = model.tokenizer.bos_token_id
    embed[:, 0] = 0.0
    embed[bos, 0] = 1.0
    embed[:, 1] = 0.5
    kv = model.card.kv_head_of(head)
    group = [h for h in range(model.n_heads) if model.card.kv_head_of(h) == kv]
    for h in group:  # blind the group's queries to the planted pair
        w_q[h * d + pair].zero_()
        w_q[h * d + pair + d // 2].zero_()
    w_k[kv * d + pair].zero_()
    w_k[kv * d + pair + d // 2].zero_()
    w_q[head * d + pair, 1] = strength
    w_k[kv * d + pair, 0] = strength


@torch.no_grad()
def plant_offset_head(
    model: HookedModel, head: int, offset: int, strength: float = 6.0, pairs: list[int] | None = None
) -> None:
    """Make layer-0 query head ``head`` attend to the token ``offset`` positions back, whatever
    the content (offset 1 = previous-token head).

    Every token gets a constant residual component (dim 1). The head's query reads it into the
    first coordinate of each rotary pair p in ``pairs`` (all by default); the key reads it into
    the same pair rotated forward by ``offset * theta_p``. The pre-softmax score at relative
    offset d is then sum_p |q_p||k_p| cos((offset - d) theta_p), maximal at d = offset only.
    The key/value head is shared under GQA, so the group's other query heads are zeroed.
    """
    if model.card.position_encoding != "rope":
        raise PosbenchError("plant_offset_head needs a RoPE model (e.g. tiny-llama)")
    embed, w_q, w_k = _llama_parts(model, 0)
    d = model.d_head
    n_pairs = (model.card.rotary_dims or d) // 2
    theta = model.rotary_inv_freq(0)
    pairs = list(range(n_pairs)) if pairs is None else list(pairs)
    embed[:, 1] = 0.5
    kv = model.card.kv_head_of(head)
    for h in range(model.n_heads):
        if model.card.kv_head_of(h) == kv:
            w_q[h * d : (h + 1) * d].zero_()
    w_k[kv * d : (kv + 1) * d].zero_()
    for p in pairs:
        angle = float(offset * theta[p])
        w_q[head * d + p, 1] = strength
        w_k[kv * d + p, 1] = strength * math.cos(angle)
        w_k[kv * d + p + n_pairs, 1] = strength * math.sin(angle)
