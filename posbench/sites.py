"""Where in the model: the site vocabulary, and the declared captures and edits that name sites.

A probe never names a hook. It declares *what to read* (a ``Capture``: a site, the layers, and a
reduction that is a pure function of the tensor and its context) and an intervention declares
*what to change* (an ``Edit``: a site, the layers, and a function returning the new tensor). The
backend maps sites onto its own hook points, runs the model once, and hands back only what the
reductions returned (pyvene keeps "where" apart from "what" the same way; nnsight's remote
execution returns only saved values, which is why reductions must not mutate outside state).

Attention is special: a probe that needs statistics of the attention pattern declares an
``AttentionCapture`` whose ``AttentionStatistic`` is folded over chunks of query rows. The
backend decides how those rows are computed (from the eager pattern now; chunk by chunk from the
captured q and k later) and never keeps a T x T matrix for more than one chunk.

Canonical shapes (B batch, T positions, H query heads, Hkv key/value heads, d head dim, D model
width, r rotary dims):
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .model import Batch

SITES: dict[str, str] = {
    "resid_pre": "[B, T, D] residual stream entering block L",
    "resid_post": "[B, T, D] residual stream leaving block L",
    "q": "[B, T, H, d] queries before RoPE (after the model's q-norm, if it has one)",
    "k": "[B, T, Hkv, d] keys before RoPE (after the model's k-norm, if it has one)",
    "v": "[B, T, Hkv, d] values",
    "rope_cos": "[B|1, T, r] the rotary cos of layer L",
    "rope_sin": "[B|1, T, r] the rotary sin of layer L",
    "rot_q": "[B, T, H, d] queries after RoPE",
    "rot_k": "[B, T, Hkv, d] keys after RoPE",
    "scores": "[B, H, T, T] pre-softmax attention scores, scaled and masked",
    "pattern": "[B, H, T, T] attention pattern (post-softmax)",
    "z": "[B, T, H, d] per-head attention output, before W_O",
    "attn_out": "[B, T, D] attention output (after W_O)",
    "mlp_out": "[B, T, D] MLP output",
    "final_norm": "[B, T, D] final normalised residual, the unembedding's input (no layer)",
}
LAYERLESS_SITES = frozenset({"final_norm"})
__doc__ += "\n".join(f"    {name:11s} {what}" for name, what in SITES.items())


def check_site(site: str) -> str:
    if site not in SITES:
        raise ValueError(f"unknown site '{site}': sites are {', '.join(SITES)}")
    return site


@dataclass(frozen=True)
class ModelFacts:
    """Static facts a reduction or edit may need, the same on every backend."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    n_pairs: int  # rotary pairs (0 without RoPE)
    scaling: tuple[float, ...]  # per layer: the factor applied to q.k before the softmax
    sliding_windows: tuple[int | None, ...] = ()  # per layer: keys i - j < window visible; None = all

    @property
    def kv_of(self) -> torch.Tensor:
        """kv_of[h] is the key/value head query head h reads (GQA)."""
        group = self.n_heads // self.n_kv_heads
        return torch.arange(self.n_heads) // group


@dataclass
class Context:
    """What a reduction, statistic or edit sees beside its tensor: the batch, the layer (None
    for layerless sites), the model facts, and for attention statistics the same-layer tensors
    it asked for (``needs``). ``unembed`` maps final hidden states to logits (chunk-friendly)."""

    batch: "Batch"
    layer: int | None
    facts: ModelFacts
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    unembed: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def sliding_window(self) -> int | None:
        """The layer's sliding window (query i sees keys i - window < j <= i), None for full
        attention: pattern entries further back are exactly zero, so folds may skip them."""
        windows = self.facts.sliding_windows
        return windows[self.layer] if self.layer is not None and self.layer < len(windows) else None

    def sequence_rows(self, rows: torch.Tensor, start: int) -> Iterator[tuple[int, torch.Tensor, int]]:
        """Per sequence of the batch, its real-token part of a chunk of pattern rows.

        ``rows`` [B, H, n, T] are the padded batch's query rows ``start .. start + n``. Yields
        ``(b, block [H, m, L_b], first)``: the chunk's rows that are real queries of sequence b,
        restricted to its real keys, and the real-token index of the first of them.
        """
        n = rows.shape[2]
        for b in range(self.batch.size):
            offset, length = int(self.batch.offsets[b]), int(self.batch.lengths[b])
            lo, hi = max(start, offset), min(start + n, offset + length)
            if lo >= hi:
                continue
            yield b, rows[b, :, lo - start : hi - start, offset : offset + length], lo - offset


@dataclass(frozen=True)
class Capture:
    """Read ``site`` at ``layers`` (None: every layer) and keep ``reduce(tensor, ctx)`` only.

    ``reduce`` must be a pure function of its arguments: its return value is the capture's
    result for that layer (a small tensor, number or list), collected by the backend.
    """

    name: str
    site: str
    reduce: Callable[[torch.Tensor, Context], Any]
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        check_site(self.site)


class AttentionStatistic(ABC):
    """A statistic of one layer's attention pattern, folded over chunks of query rows.

    ``start(ctx) -> state``; ``update(state, rows, start, ctx) -> state`` with ``rows`` [B, H, n, T]
    the pattern rows ``start .. start + n`` of the padded batch (``ctx.sequence_rows`` cuts out
    each sequence's real block); ``finish(state, ctx) -> result``. ``needs`` lists same-layer
    sites (e.g. ``rot_q``, ``rot_k``) handed over in ``ctx.tensors``. ``heads``, when set,
    restricts the rows to those query heads (``rows[:, i]`` is head ``heads[i]``), so a backend
    that computes rows from q and k computes only those. ``rows`` is valid during the call only
    (a backend may reuse its memory for the next chunk): keep what is computed from it, not the
    tensor or a view of it. Implementations keep the state small (never a T x T matrix, except
    ``HeadPattern``): the backend chooses the chunking.

    A statistic that needs only attention-weighted sums over keys (the mass on a few key columns,
    on a segment's span) declares ``key_weights(ctx)``, W [B, T, K]: ``update`` then gets
    ``rows @ W`` [B, H, n, K] instead of the rows, which the fast path takes from the attention
    kernel itself (W as extra value channels) without building any pattern row.

    A statistic that needs only single pattern entries (a diagonal: attention to the token n
    back) declares ``entries(ctx)``, the (query, key) positions of the padded batch as two long
    tensors [B, E]: ``update`` then gets their values [B, H, E] (3 dims, not 4) in one call with
    start 0, which the fast path computes from q, k and the attention kernel's per-row logsumexp
    (A[t, j] = exp(s q_t . k_j - lse_t)), again without building rows. Entries a query may not
    see are 0. A wrapper that does not forward ``entries`` hands such a statistic rows instead.
    """

    needs: ClassVar[tuple[str, ...]] = ()
    heads: tuple[int, ...] | None = None

    @abstractmethod
    def start(self, ctx: Context) -> Any: ...

    @abstractmethod
    def update(self, state: Any, rows: torch.Tensor, start: int, ctx: Context) -> Any: ...

    def finish(self, state: Any, ctx: Context) -> Any:
        return state

    def key_weights(self, ctx: Context) -> torch.Tensor | None:
        """Per-key weights [B, T, K] when only ``rows @ W`` is needed (see above); None: rows."""
        return None

    def entries(self, ctx: Context) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(query [B, E], key [B, E]) positions when only those entries are needed (see above)."""
        return None


class HeadPattern(AttentionStatistic):
    """The whole pattern [B, T, T] of one query head: a T x T matrix per layer, for the few
    places where a full pattern is the point (showing one head); only that head is computed."""

    def __init__(self, head: int):
        self.heads = (head,)

    def start(self, ctx: Context) -> list[torch.Tensor]:
        return []

    def update(self, state, rows, start, ctx):
        state.append(rows[:, 0].to("cpu", copy=True))
        return state

    def finish(self, state, ctx):
        return torch.cat(state, dim=1)


@dataclass(frozen=True)
class AttentionCapture:
    """Fold ``statistic`` over the attention pattern of ``layers`` (None: every layer)."""

    name: str
    statistic: AttentionStatistic
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Edit:
    """Replace the tensor at ``site`` in ``layers`` (None: every layer) by ``fn(tensor, ctx)``."""

    site: str
    fn: Callable[[torch.Tensor, Context], torch.Tensor]
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        check_site(self.site)


class AttentionOverride(ABC):
    """Replace the pre-softmax attention scores of ``layers`` with a computation of one's own.

    ``scores(q, k, ctx)`` gets the layer's queries [B, T, H, d] and keys [B, T, Hkv, d] *before*
    RoPE (after q/k-norm) plus ``ctx.tensors["scores"]``, the model's own masked scores, and
    the same-layer sites named in ``needs`` (e.g. ``rope_cos``, ``rope_sin``: the layer's
    rotary tables as the model, and any edit before the override, made them). It returns new
    scores [B, H, T, T] that carry their own mask (a very negative value where a key must not
    be seen). The softmax, the values and everything after run unchanged. Used by PINE.

    Under a batch whose tokens run in another order (``Batch.token_order``), an override sees
    the user's order like everything else, unless it sets ``reads_run_order`` (PINE, which
    computes on its own canonical order).
    """

    layers: tuple[int, ...] | None = None
    needs: ClassVar[tuple[str, ...]] = ()
    reads_run_order: ClassVar[bool] = False

    @abstractmethod
    def scores(self, q: torch.Tensor, k: torch.Tensor, ctx: Context) -> torch.Tensor: ...
