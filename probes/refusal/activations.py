"""Reading the model at the post-instruction template: residual activations for the direction,
and next-token logits at the last prompt token for Arditi et al.'s refusal score."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from posbench.batching import run_batches
from posbench.progress import NO_PROGRESS, Progress
from posbench.sites import Capture

from .prompts import InstructionPrompt

if TYPE_CHECKING:  # pragma: no cover
    from posbench.model import HookedModel


def _tail(k: int):
    """Reduction: the last ``k`` real tokens of every row, [B, k, D] float32 on the CPU."""

    def reduce(x: torch.Tensor, ctx) -> torch.Tensor:
        batch = ctx.batch
        ends = batch.offsets.to(x.device) + batch.lengths.to(x.device)
        cols = ends[:, None] - k + torch.arange(k, device=x.device)[None]
        return x[torch.arange(batch.size, device=x.device)[:, None], cols].float().cpu()

    return reduce


def template_activations(
    model: "HookedModel", prompts: Sequence[InstructionPrompt], k: int, *, batch_size: int = 8,
    progress: Progress = NO_PROGRESS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``resid_pre`` of every layer at the last ``k`` tokens of each prompt, [n, k, L, D], and the
    final normalised hidden state at the last token, [n, D] (its logits give the refusal score)."""
    captures = [Capture("resid", "resid_pre", _tail(k)), Capture("final", "final_norm", _tail(1))]
    resid, final = [], []
    for _, _, out in run_batches(model, [list(p.ids) for p in prompts], captures, batch_size=batch_size,
                                 progress=progress):
        resid.append(torch.stack([out.captured["resid"][layer] for layer in range(model.n_layers)], dim=2))
        final.append(out.captured["final"][:, 0])
    return torch.cat(resid), torch.cat(final)


@torch.no_grad()
def last_token_logits(model: "HookedModel", prompts: Sequence[InstructionPrompt], *, batch_size: int = 8) -> torch.Tensor:
    """Next-token logits at the last prompt token, [n, vocab], under the active interventions."""
    captures = [Capture("final", "final_norm", _tail(1))]
    hidden = [out.captured["final"][:, 0] for _, _, out in
              run_batches(model, [list(p.ids) for p in prompts], captures, batch_size=batch_size)]
    return model.backend.unembed(torch.cat(hidden).to(model.device)).cpu()
