"""Rotary frequency bands against the span actually evaluated, and the p-RoPE band test.

* ``pair_table``: per layer x pair, the frequency, its wavelength, and how far it turns across
  the **evaluated** span (the longest sequence, or the sliding window if shorter) and across the
  span the layer could see at most (window or context length). A pair that turns less than
  ``position_free_rotation`` across a span is position-free *there*: at 128 tokens the lowest
  quarter of SmolLM2's frequencies turns by at most 0.02 rad, so making it position-free tests
  nothing; the same band turns ~1.5 rad over 8k tokens.
* ``band_effects``: next-token loss (all positions and the second half, where long-range
  attention matters) and the offset heads' P(d*) with the lowest / highest fraction of each
  layer's frequencies made position-free (p-RoPE, Barbero et al. 2025), each row carrying the
  largest turn of the band across the evaluated span. ``benchmarks/rope_long_context.py`` runs
  it at 2k-8k tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch

from posbench.batching import run_batches
from posbench.head_statistics import OffsetProfile
from posbench.interventions.rope_bands import RopePositionFree
from posbench.progress import NO_PROGRESS
from posbench.reduce import nll_by_position
from posbench.sites import AttentionCapture, Capture


def layer_span(model, layer: int, length: int) -> int:
    """Tokens a query of a ``length``-token sequence can see at most in ``layer``."""
    window = model.card.sliding_windows[layer]
    return min(length, window) if window else length


def pair_table(model, evaluated_length: int, position_free_rotation: float = math.pi / 8) -> pd.DataFrame:
    """Per layer x rotary pair: ``inv_freq`` (rad/token), ``wavelength`` (tokens), ``span`` (tokens
    visible in the evaluated sequences), ``rotation_over_span`` = inv_freq x (span - 1), the largest
    relative distance), ``position_free_in_span``, and the same against ``context_span`` (sliding
    window, else the context length)."""
    rows = []
    card = model.card
    for layer in range(model.n_layers):
        freq = model.rotary_inv_freq(layer)
        span = layer_span(model, layer, evaluated_length)
        context = card.sliding_windows[layer] or card.context_length or evaluated_length
        for p, theta in enumerate(freq.tolist()):
            rows.append({
                "layer": layer, "layer_type": card.layer_types[layer], "pair": p, "dims": f"{p},{p + len(freq)}",
                "inv_freq": theta, "wavelength": (2 * math.pi / theta) if theta > 0 else math.inf,
                "rope_base": card.rope_bases[layer],
                "span": span, "rotation_over_span": theta * (span - 1),
                "position_free_in_span": theta * (span - 1) < position_free_rotation,
                "context_span": context, "rotation_over_context": theta * (context - 1),
                "position_free_in_context": theta * (context - 1) < position_free_rotation,
            })
    return pd.DataFrame(rows)


def band_turns(model, pairs: pd.DataFrame, fraction: float, highest: bool) -> pd.DataFrame:
    """Per layer type: the band's pairs (each layer's own lowest/highest ``fraction``) and the
    smallest / largest turn they make across the evaluated span and the context span."""
    iv = RopePositionFree(fraction=fraction, highest=highest)
    rows = []
    for layer_type, group in pairs.groupby("layer_type", sort=False):
        picked = pd.concat([group[(group.layer == layer) & group.pair.isin(iv.pairs_for(model, layer))]
                            for layer in group.layer.unique()])
        rows.append({"condition": condition_name(fraction, highest), "layer_type": layer_type,
                     "layers": int(group.layer.nunique()), "pairs_per_layer": int(len(picked) // group.layer.nunique()),
                     "span": int(picked.span.max()), "min_turn_over_span": float(picked.rotation_over_span.min()),
                     "max_turn_over_span": float(picked.rotation_over_span.max()),
                     "position_free_in_span": bool(picked.position_free_in_span.all()),
                     "context_span": int(picked.context_span.max()),
                     "max_turn_over_context": float(picked.rotation_over_context.max())})
    return pd.DataFrame(rows)


def condition_name(fraction: float, highest: bool) -> str:
    return f"position-free {'highest' if highest else 'lowest'} {fraction:g}"


def _profile_width(offset_heads) -> int:
    return max([d for _, _, d in offset_heads], default=0) + 1


def baseline_captures(offset_heads=None, loss_stride: int = 1) -> list:
    """What a pass needs to carry to serve as the band test's baseline: the next-token loss by
    position (every ``loss_stride``-th position) and, given ``offset_heads`` ((layer, head, d*)),
    the offset profile up to their largest d* in the layers where they sit (other layers then need
    no attention rows; without: the caller has the pass's profile already). ``band_result`` reads
    them back."""
    loss = Capture("band_nll", "final_norm",
                   lambda h, ctx: nll_by_position(ctx.unembed, h, ctx.batch, stride=loss_stride))
    layers = tuple(sorted({layer for layer, _, _ in offset_heads or ()}))
    if not layers:
        return [loss]
    return [AttentionCapture("band_profile", OffsetProfile(_profile_width(offset_heads)), layers=layers), loss]


def band_result(outputs, offset_heads, profile: torch.Tensor | None = None) -> dict[str, float]:
    """Loss (all positions, second half) and the offset heads' mean P(d*) from the captured outputs
    of passes that carried ``baseline_captures`` (``profile`` [L, H, width]: use it for P(d*)
    instead of the captured one, e.g. the same pass's full offset profile)."""
    sums, counts, captured = 0.0, 0.0, []
    for out in outputs:
        s, c = out["band_nll"]
        sums, counts = _add(sums, s), _add(counts, c)
        captured += [(layer, r) for layer, per_seq in out.get("band_profile", {}).items() for r in per_seq]
    if profile is None and captured:
        n_layers, width = 1 + max(layer for layer, _ in captured), _profile_width(offset_heads)
        prof_sums, prof_counts = torch.zeros(n_layers, captured[0][1]["sums"].shape[0], width), torch.zeros(n_layers, width)
        for layer, r in captured:
            k = r["sums"].shape[1]
            prof_sums[layer, :, :k] += r["sums"]
            prof_counts[layer, :k] += r["counts"]
        profile = prof_sums / prof_counts.clamp(min=1).unsqueeze(1)
    half = len(sums) // 2
    scores = [float(profile[layer, head, d]) for layer, head, d in offset_heads] if profile is not None else []
    return {"loss": float(sums.sum() / counts.sum().clamp(min=1)),
            "loss_second_half": float(sums[half:].sum() / counts[half:].sum().clamp(min=1)),
            "positional_head_score": sum(scores) / len(scores) if scores else float("nan")}


def _measure(model, seqs, offset_heads, batch_size, padding_side, bar, loss_stride=1):
    """``band_result`` of one pass over ``seqs`` under the active interventions."""
    captures = baseline_captures(offset_heads, loss_stride)
    outputs = [out.captured for _, _, out in run_batches(model, seqs, captures, batch_size=batch_size,
                                                         padding_side=padding_side, progress=bar)]
    return band_result(outputs, offset_heads)


def _add(acc, x: torch.Tensor) -> torch.Tensor:
    if isinstance(acc, float):
        return x.clone()
    if len(x) > len(acc):
        acc, x = x.clone(), acc
    acc[: len(x)] += x
    return acc


def band_effects(model, seqs: Sequence[Sequence[int]], offset_heads: Sequence[tuple[int, int, int]],
                 pairs: pd.DataFrame, fractions: Sequence[float], *, batch_size: int = 1,
                 padding_side: str = "right", bar=NO_PROGRESS, bands: Sequence[str] = ("lowest", "highest"),
                 loss_stride: int = 1, baseline: dict[str, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The p-RoPE band test: baseline, then each fraction's lowest and highest band position-free.

    ``offset_heads`` are (layer, head, d*) of the heads whose P(d*) is tracked (the taxonomy's
    self / previous-token / fixed-offset heads). Returns (effects, turns): one effects row per
    condition (loss, loss on the second half of the positions, their changes, the offset heads'
    mean P(d*) and its change, the band's largest turn across the evaluated span), and per
    condition and layer type the band's turn angles (``band_turns``). ``bands`` picks which ends
    are tested; ``loss_stride`` > 1 scores the loss on every stride-th position only (long runs
    on large vocabularies, see ``nll_by_position``). ``baseline``: the ``band_result`` of a pass
    over the same ``seqs`` (same batches, same stride) that the caller already ran with
    ``baseline_captures``; the baseline pass is then not repeated.
    """
    base = baseline if baseline is not None else _measure(model, seqs, offset_heads, batch_size, padding_side, bar,
                                                          loss_stride)
    rows = [{"condition": "none", "band": "", "fraction": 0.0, **base, "max_turn_over_span": 0.0, "intervention": ""}]
    turns = []
    for fraction in fractions:
        for highest in [band == "highest" for band in bands]:
            iv = RopePositionFree(fraction=fraction, highest=highest)
            with model.intervene(iv):
                res = _measure(model, seqs, offset_heads, batch_size, padding_side, bar, loss_stride)
            turn = band_turns(model, pairs, fraction, highest)
            turns.append(turn)
            rows.append({"condition": condition_name(fraction, highest), "band": "highest" if highest else "lowest",
                         "fraction": fraction, **res, "max_turn_over_span": float(turn.max_turn_over_span.max()),
                         "intervention": str(iv.describe())})
    effects = pd.DataFrame(rows)
    for col, new in (("loss", "delta_loss"), ("loss_second_half", "delta_loss_second_half"),
                     ("positional_head_score", "delta_positional_score")):
        effects[new] = effects[col] - base[col]
    order = ["condition", "band", "fraction", "loss", "delta_loss", "loss_second_half", "delta_loss_second_half",
             "positional_head_score", "delta_positional_score", "max_turn_over_span", "intervention"]
    turn_cols = ["condition", "layer_type", "layers", "pairs_per_layer", "span", "min_turn_over_span",
                 "max_turn_over_span", "position_free_in_span", "context_span", "max_turn_over_context"]
    return effects[order], (pd.concat(turns, ignore_index=True) if turns else pd.DataFrame(columns=turn_cols))


__all__ = ["band_effects", "band_result", "band_turns", "baseline_captures", "condition_name", "layer_span", "pair_table"]
