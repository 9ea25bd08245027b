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


def sdpa(module, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' own SDPA attention (output [B, T, H, d], no weights)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


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
