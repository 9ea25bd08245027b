"""The one batching driver: sequences in, one forward pass per batch, reductions out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .progress import NO_PROGRESS, Progress

if TYPE_CHECKING:  # pragma: no cover
    from .backends import RunOutput
    from .batch import Batch
    from .model import HookedModel
    from .sites import AttentionCapture, Capture


def run_batches(
    model: "HookedModel",
    sequences: Sequence[Sequence[int]],
    captures: Sequence["Capture | AttentionCapture"],
    *,
    batch_size: int,
    padding_side: str = "right",
    row_meta: Sequence[dict[str, Any]] | None = None,
    progress: Progress = NO_PROGRESS,
    logits: bool = False,
) -> Iterator[tuple[int, "Batch", "RunOutput"]]:
    """Yield ``(start, batch, output)`` for consecutive batches of ``sequences``: ``start`` is
    the index of the batch's first sequence, ``output`` what the captures reduced to."""
    model.check_lengths(sequences)
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        meta = None if row_meta is None else row_meta[start : start + batch_size]
        batch = model.batch(chunk, padding_side, row_meta=meta)
        output = model.run(batch, captures, logits=logits)
        progress.update(len(chunk))
        yield start, batch, output
