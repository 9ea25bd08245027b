"""How long the probes a report still has to run will take on this machine, said before they run.

Every estimate is measured seconds, scaled; never a constant guess (docs/faces.md, "Time
estimates"):

1. **An earlier run** of the same probe and configuration on the same model in the store (its
   ``metadata["seconds"]``, the median of them; a ``--rerun``, or the plain run when an
   intervened one is missing): that time, range 0.7-1.5x (machine load).
2. Otherwise **calibration x planned tokens x the probe's cost per token**. Calibration: one
   small forward pass of this model, timed now (seconds per token, ``calibrate``). Planned
   tokens: what the run will feed through the model, from its configuration
   (``Probe.planned_tokens``). Cost per token, seconds / (planned tokens x calibration): the
   median over the probe's earlier runs in the store that recorded both (any model: reports
   record them, ``record``), else the probe's ``work_factor`` measured on the embedded models
   (``benchmarks/estimate_factors.py``). Range 0.5-2x.

A probe with neither gets no number ("no estimate"), never a made-up one.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .model import HookedModel
    from .protocols import Probe, ProbeResult

CALIBRATION_ROWS, CALIBRATION_TOKENS = 4, 64
SAME_RUN_RANGE = (0.7, 1.5)
SCALED_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class Estimate:
    """One planned run: ``seconds`` (None: no basis), its range, and what it is based on."""

    label: str
    seconds: float | None
    low: float | None
    high: float | None
    basis: str


def calibrate(model: "HookedModel", repeats: int = 3) -> float:
    """Seconds per token of a plain forward pass of ``model`` on this machine now: a batch of
    4 x 64 random tokens, one warm-up pass, then the median of ``repeats`` timed passes."""
    import torch

    length = min(CALIBRATION_TOKENS, model.card.context_length or CALIBRATION_TOKENS)
    rows = model.random_tokens(CALIBRATION_ROWS, length, torch.Generator().manual_seed(0)).tolist()
    batch = model.batch(rows)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            model.run(batch)
            if i:  # the first pass warms caches and allocators
                times.append(time.perf_counter() - t0)
    return statistics.median(times) / (CALIBRATION_ROWS * length)


def record(result: "ProbeResult", seconds_per_token: float, planned_tokens: int | None) -> None:
    """Keep what the estimate used in the run's metadata, so later estimates learn the probe's
    cost per token from it (any model)."""
    if planned_tokens:
        result.metadata["estimate"] = {"seconds_per_token": seconds_per_token, "planned_tokens": int(planned_tokens)}


def _same_config(a: dict, b: dict) -> bool:
    from .store import _normal

    return _normal(a) == _normal(b)


def _earlier_seconds(runs, model_id: str, config: dict) -> list[float]:
    return [float(m["seconds"]) for mid, c, m in runs
            if mid == model_id and _same_config(c, config) and isinstance(m.get("seconds"), (int, float))]


def _learned_factors(runs) -> list[float]:
    out = []
    for _, _, m in runs:
        e = m.get("estimate")
        if isinstance(e, dict) and isinstance(m.get("seconds"), (int, float)):
            work = e.get("seconds_per_token", 0) * e.get("planned_tokens", 0)
            if work > 0:
                out.append(float(m["seconds"]) / work)
    return out


def estimate(probe: "Probe", label: str, model_id: str, runs, seconds_per_token: float | None,
             planned_tokens: int | None, intervened: bool = False) -> Estimate:
    """The estimate of one run of ``probe`` on ``model_id`` from the probe's stored ``runs``
    (model id, config, metadata), this model's calibration and the run's planned tokens. An
    ``intervened`` run is estimated at the probe's own cost (the intervention's is not counted)."""
    earlier = _earlier_seconds(runs, model_id, probe.get_params())
    if earlier:
        s = statistics.median(earlier)
        basis = (f"earlier runs of {probe.name} on this model took {format_seconds(s)}; the intervention's own "
                 "cost is not counted" if intervened else f"an earlier run of it on this model took {format_seconds(s)}")
        return Estimate(label, s, s * SAME_RUN_RANGE[0], s * SAME_RUN_RANGE[1], basis)
    learned = _learned_factors(runs)
    factor = statistics.median(learned) if learned else type(probe).work_factor
    if factor is None or not seconds_per_token or not planned_tokens:
        return Estimate(label, None, None, None, "no estimate: no earlier run and no measured cost per token")
    s = factor * seconds_per_token * planned_tokens
    basis = (f"{len(learned)} earlier run(s) of it" if learned else "its cost on the embedded models") + \
        f" x {planned_tokens:,} tokens x this model's speed now"
    return Estimate(label, s, s * SCALED_RANGE[0], s * SCALED_RANGE[1], basis)


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{max(1, round(s))} s"
    if s < 5400:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"


def _span(low: float, high: float) -> str:
    a, b = format_seconds(low), format_seconds(high)
    unit = b.split()[1]
    return f"{a.split()[0]}-{b}" if a.split()[1] == unit else f"{a} to {b}"


def describe(model_id: str, reused: Sequence[str], planned: Sequence[Estimate]) -> list[str]:
    """The lines a report prints before it runs anything on ``model_id``."""
    lines = []
    if reused:
        lines.append(f"{model_id}: reusing {len(reused)} stored run(s): {', '.join(reused)}")
    if not planned:
        lines.append(f"{model_id}: nothing to run, every probe is in the store")
        return lines
    known = [e for e in planned if e.seconds is not None]
    head = f"{model_id}: {len(planned)} run(s) not in the store will run"
    if known:
        total, low, high = (sum(getattr(e, a) for e in known) for a in ("seconds", "low", "high"))
        head += f", about {format_seconds(total)} ({_span(low, high)}) on this machine"
        if len(known) < len(planned):
            head += f" plus {len(planned) - len(known)} without an estimate"
    lines.append(head + ":")
    for e in planned:
        time_ = "?" if e.seconds is None else f"about {format_seconds(e.seconds)} ({_span(e.low, e.high)})"
        lines.append(f"  {e.label}: {time_}; {e.basis}")
    return lines
