"""posbench's attention function for HuggingFace transformers: SDPA, with q and k handed over.

transformers looks up a model's attention function by ``config._attn_implementation`` in its
``AttentionInterface`` and calls it with the layer's post-RoPE queries [B, H, T, d], keys and
values [B, Hkv, T, d], the mask, the scaling and (Gemma 2/3) the sliding window and softcap. We
register ``"posbench"``: it runs transformers' own SDPA attention for the output, so the forward
is exactly the model's SDPA forward, and when the caller passes a ``posbench_layer`` callback in
the attention kwargs it hands the call over to it (the backend fires its post-RoPE hooks there
and folds attention statistics from the same q and k). Masks are built as for ``"sdpa"``: None
for plain causal attention, a boolean [B, 1, T, T] otherwise.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol

import torch

ATTENTION = "posbench"


class LayerCallback(Protocol):
    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]: ...


MASKED_BLOCK = 256  # query rows per SDPA call when a boolean mask is in play (see ``blocked_sdpa``)


def sdpa(module, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' own SDPA attention (output [B, T, H, d], no weights). With a boolean mask
    (padding, a sliding window, packed rows) and many query rows, it runs in blocks of query rows
    against only the key columns each block may see (``blocked_sdpa``): ``window`` rows at a time
    on a sliding-window layer far longer than its window, ``MASKED_BLOCK`` rows otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    width = query.shape[2]
    if attention_mask is not None and attention_mask.dtype == torch.bool and width == key.shape[2]:
        window = kwargs.get("sliding_window")
        block = window if window and width > 2 * window else MASKED_BLOCK
        if width > 2 * block:
            return blocked_sdpa(sdpa_attention_forward, module, query, key, value, attention_mask, block=block, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def blocked_sdpa(attention, module, query, key, value, attention_mask, block: int, **kwargs) -> tuple[torch.Tensor, None]:
    """SDPA in blocks of ``block`` query rows, each against only the key columns its rows of the
    boolean mask allow (first to last allowed column). Masked keys add nothing to a softmax, so
    the output is the one-call output up to summation order. A masked SDPA call cannot skip
    masked blocks: one call over a causal mask with padding costs the full T x T (twice what the
    unmasked causal kernel spends), one over a sliding-window mask O(T^2) although each query sees
    ``window`` keys. Blocked, the causal layer costs about the causal half and the sliding-window
    layer O(T x window): Gemma-3's 512-token windows at 32k tokens."""
    outputs = []
    for start in range(0, query.shape[2], block):
        end = min(query.shape[2], start + block)
        rows = attention_mask[:, :, start:end]
        allowed = rows.reshape(-1, rows.shape[-1]).any(dim=0).nonzero()
        k0, k1 = (int(allowed.min()), int(allowed.max()) + 1) if len(allowed) else (0, end)
        out, _ = attention(module, query[:, :, start:end], key[:, :, k0:k1], value[:, :, k0:k1],
                           rows[..., k0:k1], **kwargs)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def posbench_attention(module, query, key, value, attention_mask, posbench_layer: LayerCallback | None = None, **kwargs):
    """The registered attention function: the caller's callback if it passed one, SDPA otherwise."""
    if posbench_layer is None:
        return sdpa(module, query, key, value, attention_mask, **kwargs)
    return posbench_layer(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Register ``"posbench"`` with transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, posbench_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextlib.contextmanager
def attention_implementation(config, name: str = ATTENTION) -> Iterator[None]:
    """Switch a model's attention implementation for the duration of a block (masks follow it)."""
    register()
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
