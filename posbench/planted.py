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


def _bos_channel(model: HookedModel, embed, w_q, w_k, head: int, strength: float) -> None:
    """Residual dim 0 marks BOS, dim 1 is a constant 0.5; ``head`` reads dim 1 into its query and
    its key head reads dim 0 into the lowest-frequency pair, which barely turns over a few hundred
    tokens: a large score on BOS, zero elsewhere. The group's other query heads are blinded to
    that pair."""
    d = model.d_head
    pair = (model.card.rotary_dims or d) // 2 - 1  # lowest frequency: inv_freq[-1]
    half = (model.card.rotary_dims or d) // 2
    bos = model.tokenizer.bos_token_id
    embed[:, 0] = 0.0
    embed[bos, 0] = 1.0
    embed[:, 1] = 0.5
    kv = model.card.kv_head_of(head)
    for h in range(model.n_heads):
        if model.card.kv_head_of(h) == kv:
            w_q[h * d + pair].zero_()
            w_q[h * d + pair + half].zero_()
    w_k[kv * d + pair].zero_()
    w_k[kv * d + pair + half].zero_()
    w_q[head * d + pair, 1] = strength
    w_k[kv * d + pair, 0] = strength


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
    _bos_channel(model, embed, w_q, w_k, head, strength)


@torch.no_grad()
def plant_offset_head(
    model: HookedModel, head: int, offset: int, strength: float = 6.0, pairs: list[int] | None = None,
    sink_strength: float = 0.0,
) -> None:
    """Make layer-0 query head ``head`` attend to the token ``offset`` positions back, whatever
    the content (offset 1 = previous-token head).

    Every token gets a constant residual component (dim 1). The head's query reads it into the
    first coordinate of each rotary pair p in ``pairs`` (all by default); the key reads it into
    the same pair rotated forward by ``offset * theta_p``. The pre-softmax score at relative
    offset d is then sum_p |q_p||k_p| cos((offset - d) theta_p), maximal at d = offset only.
    **q ~ k by construction**: in every planted pair the rotated q_i and the rotated k_{i-offset}
    are parallel (cosine 1, the score equals its Cauchy-Schwarz bound); the other pairs are zero.
    The key/value head is shared under GQA, so the group's other query heads are zeroed.

    ``sink_strength > 0`` also gives the head a first-token channel in the lowest-frequency pair
    (as ``plant_first_token_head``; that pair must not be in ``pairs``): a head that is a sink
    *and* an offset head, for the taxonomy's non-exclusive traits.
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
    if sink_strength > 0:
        if n_pairs - 1 in pairs or not model.card.adds_bos:
            raise PosbenchError("a sink channel needs a tokenizer that adds BOS and the lowest pair left out of `pairs`")
        _bos_channel(model, embed, w_q, w_k, head, sink_strength)
