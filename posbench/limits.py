"""Limits: what a request may ask for, and whether it fits in memory, checked before any work.

Two checks, both before anything large is allocated (docs/reliability.md):

* ``check_request(probe)`` needs no model: the declared counts of a probe's config (options with
  ``counts="sequences" | "tokens" | "batch"``) give the number of sequences, their length and the
  batch size; the token storage they imply must fit in the memory that is available.
* ``check_fits(probe, model)`` runs once the model is loaded and before inputs are built: the
  sequence length must fit the model's context, and the peak of one batch (tokens, one layer's
  attention pattern: all T rows on the eager path, one chunk of rows on the fast SDPA path;
  residual activations) must fit in the device's free memory.

Every bound on a single option (sequence counts, lengths, index lists) is declared with the
option (``posbench.options``); options that say what they count get the ceilings below when
they declare none, so a new probe is bounded without doing anything.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ContextTooLongError, ResourceLimitError

if TYPE_CHECKING:  # pragma: no cover
    from .model import HookedModel
    from .protocols import Probe

MAX_INDEX = 4095  # largest layer, head or rotary-pair index any model has (bounds index lists)
COUNT_CEILINGS = {
    "sequences": 10_000,  # sequences of one kind in one run
    "tokens": 131_072,  # tokens per sequence
    "batch": 1_024,  # sequences per forward pass
}

# Bytes per token held while a probe runs: the token id in Python lists (8-byte slot + 28-byte
# int) and in tensors (8), with the copies probes keep (input kinds, variants, padding): ~4x.
BYTES_PER_TOKEN = 4 * (36 + 8)
# Eager attention holds the scores and the softmaxed pattern of one layer ([B, H, T, T] each),
# and the chunked statistics read 256-row slices of it: about three T x T copies per head. The
# fast (SDPA) path holds a score and a row buffer of one chunk of query rows ([B, H, 256, T]);
# the same factor bounds it (docs/speed.md: peak RSS grows linearly in T there).
ATTENTION_COPIES = 3
# An intervention that runs the tokens in another order (``Intervention.reorders_tokens``, PINE)
# makes a row statistic keep the layer's rows whole and put them back in the user's order:
# two more T x T copies at the end of each layer (``posbench.token_order``).
REORDER_COPIES = 2
# Residual stream, q/k/v, MLP hidden and their hooked copies per token: ~12 d_model, plus ~2
# d_model per layer that the hooked forward keeps alive (fitted, with the copies above and the
# fixed overhead below, on measured peaks: benchmarks/bench_memory_estimate.py, docs/reliability.md).
ACTIVATION_WIDTHS = 12
ACTIVATION_WIDTHS_PER_LAYER = 2
FIXED_OVERHEAD = 256 * 2**20  # allocator and first-use buffers of a forward pass
MEMORY_ENV = "POSBENCH_MEMORY_LIMIT"  # bytes (suffix K/M/G/T allowed) to plan against


@dataclass(frozen=True)
class Workload:
    """What a run asks of the machine: ``sequences`` in total, at most ``tokens`` long, run
    ``batch`` at a time."""

    sequences: int
    tokens: int
    batch: int

    @property
    def total_tokens(self) -> int:
        return self.sequences * self.tokens

    def token_bytes(self) -> int:
        return self.total_tokens * BYTES_PER_TOKEN

    def peak_bytes(self, n_heads: int, d_model: int, n_layers: int, dtype_bytes: int = 4,
                   query_rows: int | None = None, copies: int = ATTENTION_COPIES) -> int:
        """Token storage plus the largest forward pass: ``copies`` of one batch's attention
        pattern in one layer (``batch x heads x query_rows x T``; ``query_rows`` is T on the
        eager path, one chunk on the fast path), its activations and a fixed overhead."""
        batch = min(self.batch, self.sequences)
        rows = self.tokens if query_rows is None else min(query_rows, self.tokens)
        attention = batch * n_heads * rows * self.tokens * dtype_bytes * copies
        widths = ACTIVATION_WIDTHS + ACTIVATION_WIDTHS_PER_LAYER * n_layers
        activations = batch * self.tokens * d_model * dtype_bytes * widths
        return self.token_bytes() + attention + activations + FIXED_OVERHEAD


def workload(config: Any) -> Workload | None:
    """The workload a config declares through its options' ``counts`` (None if it declares no
    token length). Sequences add up over every sequence count; the longest length counts. A
    config whose counts combine otherwise (per label, per condition) says so in its own
    ``workload()`` method, which is used instead."""
    from .options import specs

    own = getattr(config, "workload", None)
    if callable(own):
        return own()
    sequences, tokens, batch = 0, 0, 1
    for spec in specs(type(config)).values():
        value = getattr(config, spec.name)
        if spec.counts is None or value is None or spec.is_tuple:
            continue
        if spec.counts == "sequences":
            sequences += int(value)
        elif spec.counts == "tokens":
            tokens = max(tokens, int(value))
        else:
            batch = max(batch, int(value))
    if not tokens:
        return None
    return Workload(max(sequences, 1), tokens, batch)


def gib(n_bytes: float) -> str:
    """A size for a message: GiB down to 0.1 GiB, then MiB, then KiB."""
    if n_bytes >= 2**30 / 10:
        return f"{n_bytes / 2**30:.1f} GiB"
    return f"{n_bytes / 2**20:.0f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"


def _parse_bytes(text: str) -> int | None:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if text and text[-1] in "KMGT":
        scale = 1024 ** ("KMGT".index(text[-1]) + 1)
        text = text[:-1]
    try:
        value = float(text) * scale
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value > 0 else None


def available_bytes(device: Any = "cpu") -> int | None:
    """Memory a run may use: ``$POSBENCH_MEMORY_LIMIT`` if set, else the device's free memory
    (CUDA: ``mem_get_info``; CPU: MemAvailable from /proc/meminfo), None if unknown."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        parsed = _parse_bytes(override)
        if parsed is None:
            raise ResourceLimitError(f"${MEMORY_ENV}={override!r} is not a size: write bytes or e.g. 8G")
        return parsed
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _fix(probe: "Probe") -> str:
    return f"lower the sequence count (--n), --seq-len or batch_size of probe '{probe.name}'"


def check_request(probe: "Probe") -> Workload | None:
    """Refuse, before any model is loaded, a request whose tokens alone cannot fit in memory."""
    work = workload(probe.config)
    if work is None:
        return None
    free = available_bytes()
    need = work.token_bytes()
    if free is not None and need > free:
        raise ResourceLimitError(
            f"probe '{probe.name}' would hold {work.sequences} sequences x {work.tokens} tokens "
            f"(~{gib(need)} of token storage) but {gib(free)} of memory is available: {_fix(probe)}"
        )
    return work


def check_fits(probe: "Probe", model: "HookedModel", work: Workload | None = None,
               fix: str | None = None) -> Workload | None:
    """Refuse, before inputs are built, a run longer than the model's context or whose largest
    forward pass cannot fit in the device's free memory: the declared workload, or ``work``
    (probes whose sizes are known only once their inputs are built pass the real one)."""
    work = check_request(probe) if work is None else work
    if work is None:
        return None
    card = model.card
    context = card.context_length
    if context is not None and work.tokens > context:
        raise ContextTooLongError(
            f"probe '{probe.name}' asks for {work.tokens}-token sequences but {model.model_id}'s "
            f"context is {context}: {fix or f'lower --seq-len to at most {context}'}"
        )
    return check_memory(probe, model, work, fix)


def check_memory(probe: "Probe", model: "HookedModel", work: Workload, fix: str | None = None) -> Workload:
    """Refuse a workload whose largest forward pass cannot fit in the device's free memory
    (``check_fits`` with a declared workload; probes whose sizes are known only once their
    inputs are built call it with the real one)."""
    card = model.card
    dtype_bytes = 2 if card.dtype in ("float16", "bfloat16") else 4
    rows = model.attention_rows_held(work.tokens)
    copies = ATTENTION_COPIES + (REORDER_COPIES if any(iv.reorders_tokens for iv in model.interventions) else 0)
    need = work.peak_bytes(card.n_heads, card.d_model, card.n_layers, dtype_bytes, rows, copies)
    free = available_bytes(model.device)
    if free is not None and need > free:
        raise ResourceLimitError(
            f"probe '{probe.name}' on {model.model_id} needs about {gib(need)} at its peak "
            f"({copies} x batch {min(work.batch, work.sequences)} x {card.n_heads} heads x {rows} x {work.tokens} attention, "
            f"{work.sequences} sequences) but {gib(free)} is free: {fix or _fix(probe)}"
        )
    return work
