"""RoPE-base feasibility: the aliasing and DC-stability lower bounds and the precision upper bound.

Seed paper: Feilong Liu, "Rotary Positional Embeddings as Phase Modulation: Theoretical Bounds on
the RoPE Base for Long-Context Transformers", arXiv:2602.10959 (v1, Feb 2026).

What we could and could not read (see docs/rope-theory.md, "Provenance"):

* The paper's full text was **not** reachable from this environment (no arXiv access; the
  searchable corpora hold only its abstract and third-party summaries). Its **equation numbers
  are therefore not cited here**; the formulas are the closed forms its abstract and summaries
  state, re-derived below from first principles so that every step can be checked:

  - aliasing (a Nyquist-like limit):      L < 2*pi*base           =>  base > L / (2*pi)
  - DC-component stability:               base >= L / arccos(eps)
  - the same, compounded over N layers:   base >= L / arccos(eps**(1/N))
  - precision ("the precision wall"):     base < 1 / eps_mach

* The paper writes the frequencies as theta_i = base**(-2(i-1)/d), i = 1..d/2, and then takes
  the lowest one to be 1/base (a third-party review of v1 points this out: for finite d the
  lowest is base**(-(d-2)/d)). ``convention="paper"`` reproduces the published closed forms
  (omega_min = 1/base); ``convention="exact"`` uses the frequency HuggingFace actually builds,
  omega_min = base**(-(d-2)/d) for rotary dim d, which gives the same bounds with base replaced
  by base**((d-2)/d), i.e. each bound raised to the power d/(d-2).

* eps = 0.95 is the coherence threshold the paper's model table uses, and FP32 is the precision
  it assumes there (both from the same review; not checked against the PDF).

Derivations, with omega_min the lowest rotary frequency (rad/token) and L the span a layer sees:

* Aliasing. The lowest-frequency phasor exp(i * omega_min * p) must not complete a full turn
  within the span, or two positions L apart share a phase:  omega_min * L < 2*pi.
* DC stability. The lowest band is the "DC" carrier of long-range position; its phase drift over
  the span must keep the phasor inside a cone of half-angle arccos(eps) around its start:
  cos(omega_min * L) >= eps, i.e. omega_min * L <= arccos(eps).
* Depth. If each of N layers applies the rotation independently, coherence multiplies:
  cos(omega_min * L)**N >= eps, i.e. omega_min * L <= arccos(eps**(1/N)).
* Precision. The per-token phase increment of the lowest band, omega_min, must stay above the
  resolution of the number format at unit scale (the spacing of floats just above 1, eps_mach =
  ``torch.finfo(dtype).eps``): omega_min > eps_mach. In FP32, 1/eps_mach = 2**23 ~ 8.39e6.

The lower bounds grow with L and the upper bound does not, so the feasible interval closes at
``max_feasible_context`` (the paper's "hard precision wall" for very long contexts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..card import ModelCard

#: Coherence threshold of the DC-stability bound (the value the paper's model table uses).
DEFAULT_EPS = 0.95
CONVENTIONS = ("paper", "exact")

_TABLE_COLUMNS = [
    "layer_type", "base", "span", "span_source", "layers", "n_layers", "rotary_dim", "rope_type",
    "convention", "dtype", "eps", "depth", "omega_min", "wavelength",
    "aliasing_bound", "dc_stability_bound", "dc_depth_bound", "precision_bound",
    "lower_bound", "upper_bound", "feasible",
    "aliasing_margin_log10", "dc_margin_log10", "dc_depth_margin_log10", "precision_margin_log10",
    "margin_log10",
]


def _check_convention(convention: str, rotary_dim: int | None) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention == "exact":
        if rotary_dim is None:
            raise ValueError("convention='exact' needs the rotary dim d (omega_min = base**(-(d-2)/d))")
        if rotary_dim < 4 or rotary_dim % 2:
            raise ValueError(f"rotary dim must be even and >= 4 for convention='exact', got {rotary_dim}")


def _exponent(convention: str, rotary_dim: int | None) -> float:
    """omega_min = base**(-a): a = 1 (paper) or (d-2)/d (exact)."""
    _check_convention(convention, rotary_dim)
    return 1.0 if convention == "paper" else (rotary_dim - 2) / rotary_dim


def _base_for_omega(omega: float, convention: str, rotary_dim: int | None) -> float:
    """The base whose lowest frequency is ``omega``."""
    return omega ** (-1.0 / _exponent(convention, rotary_dim))


def rope_inv_freq(base: float, rotary_dim: int) -> np.ndarray:
    """HF default RoPE frequencies (rad/token) of rotary pairs k = 0..d/2-1: base**(-2k/d)."""
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"rotary dim must be even and >= 2, got {rotary_dim}")
    return float(base) ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def lowest_frequency(base: float, rotary_dim: int | None = None, convention: str = "paper") -> float:
    """omega_min in rad/token: 1/base (paper) or base**(-(d-2)/d) (exact, = HF's last inv_freq)."""
    if base <= 1:
        raise ValueError(f"RoPE base must be > 1, got {base}")
    return float(base) ** (-_exponent(convention, rotary_dim))


def machine_epsilon(dtype: str | torch.dtype = "float32") -> float:
    """Spacing of floats just above 1 (``torch.finfo(dtype).eps``): 2**-23 in FP32, 2**-7 in BF16."""
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "")
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {name!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"{dtype} is not a floating-point dtype")
    return float(torch.finfo(dtype).eps)


def aliasing_bound(span: float, rotary_dim: int | None = None, convention: str = "paper") -> float:
    """Smallest base (strict lower bound) with omega_min * span < 2*pi.

    paper: base > L / (2*pi);  exact: base > (L / (2*pi)) ** (d / (d - 2)).
    """
    if span <= 0:
        raise ValueError(f"span must be positive, got {span}")
    return _base_for_omega(2 * math.pi / span, convention, rotary_dim)


def dc_stability_bound(
    span: float, eps: float = DEFAULT_EPS, depth: int = 1, rotary_dim: int | None = None, convention: str = "paper"
) -> float:
    """Smallest base with cos(omega_min * span) ** depth >= eps.

    depth = 1: base >= L / arccos(eps) (the DC-component stability bound);
    depth = N: base >= L / arccos(eps ** (1/N)) (the depth-compounded bound).
    exact convention: the same raised to the power d / (d - 2).
    """
    if span <= 0:
        raise ValueError(f"span must be positive, got {span}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    angle = math.acos(eps ** (1.0 / depth))
    return _base_for_omega(angle / span, convention, rotary_dim)


def precision_bound(dtype: str | torch.dtype = "float32", rotary_dim: int | None = None, convention: str = "paper") -> float:
    """Largest base (strict upper bound) with omega_min > eps_mach.

    paper: base < 1 / eps_mach (FP32: 2**23 ~ 8.39e6);  exact: base < eps_mach ** (-d / (d - 2)).
    """
    return _base_for_omega(machine_epsilon(dtype), convention, rotary_dim)


def max_feasible_context(
    eps: float = DEFAULT_EPS, depth: int = 1, dtype: str | torch.dtype = "float32",
    rotary_dim: int | None = None, convention: str = "paper",
) -> float:
    """The span at which the DC(-depth) lower bound meets the precision upper bound.

    Beyond it no base satisfies both: L_max = arccos(eps**(1/N)) / eps_mach (both conventions
    give the same L_max, since both bounds are statements about omega_min).
    """
    if not 0 < eps < 1 or depth < 1:
        raise ValueError("need 0 < eps < 1 and depth >= 1")
    _check_convention(convention, rotary_dim)
    return math.acos(eps ** (1.0 / depth)) / machine_epsilon(dtype)


def _log10_ratio(a: float, b: float) -> float:
    return math.log10(a / b)


def base_feasibility(
    card: ModelCard,
    *,
    eps: float = DEFAULT_EPS,
    depth: int | None = None,
    dtype: str | torch.dtype = "float32",
    convention: str = "paper",
) -> pd.DataFrame:
    """One row per distinct (layer kind, base, span) of a RoPE model, with every bound.

    * ``span``: the layer's sliding window, else the card's context length.
    * ``depth``: N of the depth-compounded DC bound; default: the number of RoPE layers.
    * ``dtype``: the precision the rotation angles are computed in. HF builds ``inv_freq`` and
      the angles in float32 whatever the weights' dtype, hence the float32 default (not
      ``card.dtype``).
    * bounds are values of the base: ``lower_bound = max(aliasing, dc_depth)`` (the DC bound at
      N = 1 is implied by the depth one), ``upper_bound = precision``; ``feasible`` is
      lower <= base < upper.
    * margins are log10 ratios, positive on the feasible side: ``aliasing_margin_log10 =
      log10(base / aliasing_bound)``, ..., ``precision_margin_log10 = log10(precision_bound /
      base)``; ``margin_log10`` is the smaller of the binding two (negative = outside).

    Returns an empty table (same columns) for a model without RoPE. Layers whose rope_type is
    not "default" (llama3, YaRN, ...) have rescaled low frequencies; their rows are computed for
    the nominal base and carry the ``rope_type`` so the reader can tell.
    """
    if card.position_encoding != "rope":
        return pd.DataFrame(columns=_TABLE_COLUMNS)
    rotary_dim = card.rotary_dims or card.head_dim
    _check_convention(convention, rotary_dim)
    n_rope_layers = sum(b is not None for b in card.rope_bases)
    depth = n_rope_layers if depth is None else int(depth)
    eps_name = str(dtype).replace("torch.", "")

    groups: dict[tuple, list[int]] = {}
    for layer, base in enumerate(card.rope_bases):
        if base is None:
            continue
        ltype = card.layer_types[layer] if layer < len(card.layer_types) else "full_attention"
        window = card.sliding_windows[layer] if layer < len(card.sliding_windows) else None
        rope_type = card.rope_types[layer] if layer < len(card.rope_types) else None
        if window is not None:
            span, source = int(window), "sliding_window"
        elif card.context_length:
            span, source = int(card.context_length), "context_length"
        else:
            raise ValueError(f"{card.model_id}: layer {layer} has no sliding window and the card has no context length")
        groups.setdefault((ltype, float(base), span, source, rope_type), []).append(layer)

    rows: list[dict[str, Any]] = []
    upper = precision_bound(dtype, rotary_dim, convention)
    for (ltype, base, span, source, rope_type), layers in groups.items():
        aliasing = aliasing_bound(span, rotary_dim, convention)
        dc = dc_stability_bound(span, eps, 1, rotary_dim, convention)
        dc_depth = dc_stability_bound(span, eps, depth, rotary_dim, convention)
        lower = max(aliasing, dc_depth)
        omega = lowest_frequency(base, rotary_dim, convention)
        margins = {
            "aliasing_margin_log10": _log10_ratio(base, aliasing),
            "dc_margin_log10": _log10_ratio(base, dc),
            "dc_depth_margin_log10": _log10_ratio(base, dc_depth),
            "precision_margin_log10": _log10_ratio(upper, base),
        }
        rows.append({
            "layer_type": ltype, "base": base, "span": span, "span_source": source,
            "layers": layers, "n_layers": len(layers), "rotary_dim": rotary_dim, "rope_type": rope_type,
            "convention": convention, "dtype": eps_name, "eps": eps, "depth": depth,
            "omega_min": omega, "wavelength": 2 * math.pi / omega,
            "aliasing_bound": aliasing, "dc_stability_bound": dc, "dc_depth_bound": dc_depth,
            "precision_bound": upper, "lower_bound": lower, "upper_bound": upper,
            "feasible": bool(lower <= base < upper),
            **margins,
            "margin_log10": min(_log10_ratio(base, lower), margins["precision_margin_log10"]),
        })
    table = pd.DataFrame(rows, columns=_TABLE_COLUMNS)
    return table.sort_values(["span", "base"], kind="stable").reset_index(drop=True)


_BOUND_STYLE = {
    "aliasing_bound": ("aliasing", "triangle-right", "#7f7f7f"),
    "dc_stability_bound": ("DC stability (N=1)", "line-ns-open", "#1f77b4"),
    "dc_depth_bound": ("DC stability (depth N)", "triangle-right-open", "#1f77b4"),
    "precision_bound": ("precision", "triangle-left", "#d62728"),
}


def feasibility_figure(table: pd.DataFrame, title: str | None = None):
    """Feasible base intervals (one line per row) on a log-base axis, bounds as ticks, the
    model's bases as markers (green inside the interval, red outside)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if table.empty:
        fig.update_layout(title=title or "RoPE base feasibility (no RoPE layers)")
        return fig
    labels = [f"{r.layer_type} · span {r.span:,} · base {r.base:,.0f}" for r in table.itertuples()]
    for i, r in enumerate(table.itertuples()):
        fig.add_trace(go.Scatter(
            x=[r.lower_bound, r.upper_bound], y=[labels[i]] * 2, mode="lines",
            line=dict(width=10, color="rgba(44,160,44,0.25)" if r.lower_bound < r.upper_bound else "rgba(214,39,40,0.25)"),
            name="feasible interval", legendgroup="interval", showlegend=i == 0,
            hovertemplate=f"feasible [{r.lower_bound:.3g}, {r.upper_bound:.3g})<extra></extra>",
        ))
    for col, (name, symbol, color) in _BOUND_STYLE.items():
        fig.add_trace(go.Scatter(
            x=table[col], y=labels, mode="markers", name=name,
            marker=dict(symbol=symbol, size=12, color=color, line=dict(width=2, color=color)),
            hovertemplate=f"{name}: %{{x:.4g}}<extra></extra>",
        ))
    ok = table["feasible"].to_numpy()
    fig.add_trace(go.Scatter(
        x=table["base"], y=labels, mode="markers", name="model base",
        marker=dict(symbol="diamond", size=14, color=np.where(ok, "#2ca02c", "#d62728"), line=dict(width=1, color="black")),
        customdata=np.stack([table["margin_log10"], table["n_layers"]], axis=-1),
        hovertemplate="base %{x:g}<br>margin %{customdata[0]:+.2f} decades<br>%{customdata[1]} layers<extra></extra>",
    ))
    first = table.iloc[0]
    fig.update_layout(
        title=title or (f"RoPE base feasibility ({first['convention']} convention, eps={first['eps']}, "
                        f"depth N={first['depth']}, {first['dtype']})"),
        xaxis=dict(type="log", title="RoPE base"), yaxis=dict(title=None, autorange="reversed"),
        legend=dict(orientation="h", y=-0.35), height=260 + 60 * len(table),
    )
    return fig


__all__: Sequence[str] = [
    "DEFAULT_EPS", "CONVENTIONS", "rope_inv_freq", "lowest_frequency", "machine_epsilon",
    "aliasing_bound", "dc_stability_bound", "precision_bound", "max_feasible_context",
    "base_feasibility", "feasibility_figure",
]
