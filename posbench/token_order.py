"""Running a batch's tokens in another column order while everything else sees the user's order.

An input edit may return a batch whose tokens are a per-row permutation of the user's columns
(``Batch.token_order``): PINE runs the segments of every row in a canonical content order, so
that every order of the same segments is the same computation bit for bit. The model then runs
the permuted batch, and ``HookedModel.run`` maps everything a probe or another intervention sees
back to the user's order:

* captures get their site tensor, and ``ctx.batch``, in the user's order before they reduce;
* activation edits get the user's order and their result is put back into the run order;
* attention overrides (other than the one that reorders, ``AttentionOverride.reads_run_order``)
  and attention statistics see the user's query rows and key columns;
* the logits come back in the user's order.

Only token columns move. Position ids, the attention mask, offsets, lengths and ``row_meta`` are
properties of a column and stay where they are; so do the rotary tables (``rope_cos``/``rope_sin``
are per position, not per token).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch

from .sites import (
    AttentionCapture,
    AttentionOverride,
    AttentionStatistic,
    Capture,
    Context,
    Edit,
)

# the axes of a site's canonical tensor that index tokens (see posbench.sites.SITES); every
# other site is [B, T, ...] with one token axis, the rotary tables none
TOKEN_AXES: dict[str, tuple[int, ...]] = {"scores": (2, 3), "pattern": (2, 3), "rope_cos": (), "rope_sin": ()}


def token_axes(site: str) -> tuple[int, ...]:
    return TOKEN_AXES.get(site, (1,))


@dataclass(frozen=True)
class TokenOrder:
    """Run column j of row b holds the user's column ``columns[b, j]``; ``segments`` are the
    user's segment spans (the run batch carries the reordered ones)."""

    columns: torch.Tensor  # [B, T] long
    segments: Any = None

    @cached_property
    def inverse(self) -> torch.Tensor:
        """[B, T]: the run column of the user's column i."""
        return self.columns.argsort(dim=1)

    @staticmethod
    def _gather(x: torch.Tensor, index: torch.Tensor, axis: int) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[0], shape[axis] = index.shape
        return x.gather(axis, index.to(x.device).view(shape).expand(*x.shape[:axis], index.shape[1], *x.shape[axis + 1:]))

    def to_user(self, x: torch.Tensor, axes: tuple[int, ...] = (1,)) -> torch.Tensor:
        for axis in axes:
            x = self._gather(x, self.inverse, axis)
        return x

    def to_run(self, x: torch.Tensor, axes: tuple[int, ...] = (1,)) -> torch.Tensor:
        for axis in axes:
            x = self._gather(x, self.columns, axis)
        return x

    def then(self, later: TokenOrder) -> TokenOrder:
        """This order followed by ``later`` (which permuted this order's run batch)."""
        return TokenOrder(self.columns.gather(1, later.columns.to(self.columns.device)), self.segments)

    def user_batch(self, run_batch):
        """The run batch as the user ordered it (what captures and edits see as ``ctx.batch``)."""
        key_mask = None if run_batch.key_mask is None else self.to_user(run_batch.key_mask, (1, 2))
        return replace(run_batch, input_ids=self.to_user(run_batch.input_ids), key_mask=key_mask,
                       segments=self.segments, token_order=None)


def reorder(batch, columns: torch.Tensor, segments):
    """``batch`` with row b's tokens in the column order ``columns[b]`` (run column j holds column
    ``columns[b, j]``) and the reordered ``segments``; the order is recorded, so the model maps
    every output back (composes with an order already there)."""
    columns = columns.to(batch.input_ids.device)
    order = TokenOrder(columns, batch.segments)
    key_mask = None if batch.key_mask is None else order.to_run(batch.key_mask, (1, 2))
    if batch.token_order is not None:
        order = batch.token_order.then(order)
    return replace(batch, input_ids=batch.input_ids.gather(1, columns), key_mask=key_mask, segments=segments,
                   token_order=order)


# ---------------------------------------------------------------------------- the user's view
def _user_ctx(ctx: Context, order: TokenOrder, user) -> Context:
    tensors = {site: order.to_user(t, token_axes(site)) for site, t in ctx.tensors.items()}
    return replace(ctx, batch=user, tensors=tensors)


def in_user_order(order: TokenOrder, user, captures, edits, overrides):
    """Captures, edits and overrides wrapped so that they see ``user`` (the user's batch) and
    their tensors in the user's order (see the module docstring)."""
    return ([_capture(c, order, user) for c in captures], [_edit(e, order, user) for e in edits],
            [o if o.reads_run_order else _UserOverride(o, order, user) for o in overrides])


def _capture(capture, order: TokenOrder, user):
    if isinstance(capture, AttentionCapture):
        return replace(capture, statistic=_UserStatistic(capture.statistic, order, user))
    axes = token_axes(capture.site)

    def reduce(x, ctx, inner=capture.reduce):
        return inner(order.to_user(x, axes), _user_ctx(ctx, order, user))

    return Capture(capture.name, capture.site, reduce, capture.layers)


def _edit(edit: Edit, order: TokenOrder, user) -> Edit:
    axes = token_axes(edit.site)

    def fn(x, ctx, inner=edit.fn):
        return order.to_run(inner(order.to_user(x, axes), _user_ctx(ctx, order, user)), axes)

    return Edit(edit.site, fn, edit.layers)


class _UserOverride(AttentionOverride):
    def __init__(self, inner: AttentionOverride, order: TokenOrder, user):
        self.inner, self.order, self.user = inner, order, user
        self.layers, self.needs = inner.layers, inner.needs

    def scores(self, q, k, ctx):
        to_user = self.order.to_user
        new = self.inner.scores(to_user(q), to_user(k), _user_ctx(ctx, self.order, self.user))
        return self.order.to_run(new, (2, 3))


class _UserStatistic(AttentionStatistic):
    """A statistic fed the user's query rows and key columns: the run's rows are kept whole
    (one [B, H, T, T] copy per layer, or [B, H, T, K] with key weights), put back into the
    user's order and folded in ``finish`` (in chunks the size the backend used)."""

    def __init__(self, inner: AttentionStatistic, order: TokenOrder, user):
        self.inner, self.order, self.user = inner, order, user
        self.needs, self.heads = inner.needs, inner.heads
        self._weighted = False

    def key_weights(self, ctx):
        weights = self.inner.key_weights(_user_ctx(ctx, self.order, self.user))
        self._weighted = weights is not None
        return None if weights is None else self.order.to_run(weights)

    def start(self, ctx):
        return []

    def update(self, state, rows, start, ctx):
        state.append(rows.clone())
        return state

    def finish(self, state, ctx):
        uctx = _user_ctx(ctx, self.order, self.user)
        chunk = None if self._weighted or not state else state[0].shape[2]
        whole = torch.cat(state, dim=2)
        state.clear()  # the chunks are in ``whole`` now: at most two copies of the rows at once
        rows = self.order.to_user(whole, (2,))  # query rows, then (unweighted) key columns:
        del whole  # one axis at a time, so no more than two copies are alive
        if not self._weighted:
            rows = self.order.to_user(rows, (3,))
        chunk = chunk or max(rows.shape[2], 1)
        inner = self.inner.start(uctx)
        for start in range(0, rows.shape[2], chunk):
            inner = self.inner.update(inner, rows[:, :, start : start + chunk], start, uctx)
        return self.inner.finish(inner, uctx)
