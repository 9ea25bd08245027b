"""One head taxonomy for every probe that groups heads (sinks, positional-heads, rope-usage).

A head gets **non-exclusive boolean traits**, each a plain test on statistics the probes already
reduce (``posbench.head_statistics``), and **one primary label** chosen by a fixed precedence,
so a head can be a sink *and* an induction head and both show.

Traits (thresholds are ``HeadThresholds`` fields; profiles are sink-free: key 0 dropped, rows
renormalised; "both inputs" = random tokens and natural text):

* ``sink``: alpha_0 > ``sink_threshold`` on natural text *and* on random tokens (when measured).
  alpha_0 is Gu et al.'s first-key mass, query 0 included (as in the sinks probe). The random-token
  condition keeps out a content head that fires on a common first word.
* ``self`` / ``previous_token`` / ``fixed_offset``: the offset profile peaks at the same offset d*
  on both inputs with P(d*) >= ``offset_threshold`` on both; d* = 0, 1, >= 2 (``offset`` holds d*).
* ``local_window``: P(0..window) >= ``window_threshold`` on both inputs and no single dominant offset.
* ``induction`` / ``duplicate``: induction / duplicate-token score (Olsson et al. 2022) >= threshold.
* ``content``: content invariance < ``content_threshold`` or PDS < ``content_pds_threshold``.
* ``diffuse``: none of content, self, previous_token, fixed_offset, local_window (content-invariant
  and position-driven, but broad).

Primary label: the first trait that holds in ``PRIMARY_ORDER`` — specific mechanisms first
(induction, the offset heads, duplicate, local window), then ``sink`` (the resting state most heads
share past the first layers, so it must not hide a mechanism), then the residual descriptions
``content`` and ``diffuse``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from .options import option

TRAITS = ("sink", "self", "previous_token", "fixed_offset", "local_window", "induction", "duplicate",
          "content", "diffuse")
PRIMARY_ORDER = ("induction", "previous_token", "self", "fixed_offset", "duplicate", "local_window", "sink",
                 "content", "diffuse")
OFFSET_TRAITS = ("self", "previous_token", "fixed_offset")
POSITIONAL_TRAITS = OFFSET_TRAITS + ("local_window",)


def label(trait: str) -> str:
    """The label a trait is shown as: ``previous_token`` -> ``previous-token``."""
    return trait.replace("_", "-")


LABELS = tuple(label(t) for t in PRIMARY_ORDER)
OFFSET_LABELS = tuple(label(t) for t in OFFSET_TRAITS)
POSITIONAL_LABELS = tuple(label(t) for t in POSITIONAL_TRAITS)

# the statistics the traits read, per (layer, head): columns of a head-statistics table
STATISTICS = ("alpha0_natural", "alpha0_random", "top_offset_random", "top_score_random", "top_offset_natural",
              "top_score_natural", "window_mass_random", "window_mass_natural", "content_invariance", "pds",
              "duplicate_score", "induction_score")


@dataclass
class HeadThresholds:
    """The taxonomy's thresholds, shared as options by every probe that groups heads."""

    sink_threshold: float = option(0.3, min=0.0, max=1.0, help="alpha_0 above this on natural text and random tokens: sink")
    offset_threshold: float = option(0.5, min=0.0, max=1.0, help="P(d*) above this on both inputs, same d*: self / previous-token / fixed-offset")
    window: int = option(8, min=1, help="local window width (offsets 0..window)")
    window_threshold: float = option(0.8, min=0.0, max=1.0, help="P(0..window) above this on both inputs: local-window")
    content_threshold: float = option(0.6, min=0.0, max=1.0, help="content invariance below this: content")
    content_pds_threshold: float = option(0.55, min=0.0, max=1.0, help="or PDS below this: attention departs from any offset rule")
    induction_threshold: float = option(0.3, min=0.0, max=1.0, help="induction score at or above this: induction")
    duplicate_threshold: float = option(0.3, min=0.0, max=1.0, help="duplicate-token score at or above this: duplicate")


def thresholds_of(config) -> HeadThresholds:
    """The ``HeadThresholds`` part of any config that carries those fields."""
    return HeadThresholds(**{f.name: getattr(config, f.name) for f in fields(HeadThresholds)})


def sink_trait(alpha0_natural, alpha0_random=None, threshold: float = 0.3):
    """alpha_0 > threshold on natural text and (if measured; NaN = not measured) on random tokens."""
    natural = np.asarray(alpha0_natural, dtype=float) > threshold
    if alpha0_random is None:
        return natural
    random = np.asarray(alpha0_random, dtype=float)
    return natural & (np.isnan(random) | (random > threshold))


def head_traits(stats: pd.DataFrame, t: HeadThresholds | None = None) -> pd.DataFrame:
    """``stats`` (one row per layer x head with the ``STATISTICS`` columns) with the trait columns,
    ``offset`` (d* of an offset head, else -1), ``primary`` (label) and ``traits`` (all labels)."""
    t = t or HeadThresholds()
    out = stats.copy()
    same = out.top_offset_random == out.top_offset_natural
    peaked = same & (np.minimum(out.top_score_random, out.top_score_natural) >= t.offset_threshold)
    d = out.top_offset_random
    out["sink"] = sink_trait(out.alpha0_natural, out.alpha0_random, t.sink_threshold)
    out["self"] = peaked & (d == 0)
    out["previous_token"] = peaked & (d == 1)
    out["fixed_offset"] = peaked & (d >= 2)
    out["local_window"] = ~peaked & (np.minimum(out.window_mass_random, out.window_mass_natural) >= t.window_threshold)
    out["induction"] = out.induction_score >= t.induction_threshold
    out["duplicate"] = out.duplicate_score >= t.duplicate_threshold
    out["content"] = (out.content_invariance < t.content_threshold) | (out.pds < t.content_pds_threshold)
    out["diffuse"] = ~out.content & ~peaked & ~out.local_window
    for trait in TRAITS:
        out[trait] = out[trait].astype(bool)
    out["offset"] = np.where(peaked, d, -1).astype(int)
    out["primary"] = [primary_label(r) for r in out[list(TRAITS)].to_dict("records")]
    out["traits"] = [",".join(label(x) for x in PRIMARY_ORDER if r[x]) for r in out[list(TRAITS)].to_dict("records")]
    return out


def primary_label(traits: dict[str, bool]) -> str:
    """The first trait in ``PRIMARY_ORDER`` that holds (every head has one: diffuse or content
    holds whenever no offset or window trait does)."""
    for trait in PRIMARY_ORDER:
        if traits[trait]:
            return label(trait)
    raise ValueError("no trait holds: content or diffuse must (the traits table is inconsistent)")


def trait_counts(heads: pd.DataFrame) -> dict[str, int]:
    """How many heads carry each trait and each primary label (``trait:...`` / ``primary:...``)."""
    out = {f"heads_{label(t)}": int(heads[t].sum()) for t in TRAITS}
    primary = heads["primary"].value_counts()
    out.update({f"primary_{name}": int(primary.get(name, 0)) for name in LABELS})
    return out


def label_table(heads: pd.DataFrame) -> pd.DataFrame:
    """Per label: how many heads have it as their primary label and how many carry the trait."""
    primary = heads["primary"].value_counts()
    return pd.DataFrame([{"label": label(t), "primary": int(primary.get(label(t), 0)), "trait": int(heads[t].sum())}
                         for t in PRIMARY_ORDER])


def primary_figure(heads: pd.DataFrame, title: str = "Head primary labels (hover: every trait)"):
    """Layer x head map coloured by primary label; hover lists all traits and the key statistics."""
    import plotly.express as px

    hover = [c for c in ("kv_head", "traits", "offset", "alpha0_natural", "top_score_random", "pds",
                         "content_invariance", "induction_score") if c in heads]
    return px.scatter(heads, x="head", y="layer", color="primary", symbol="primary", hover_data=hover,
                      category_orders={"primary": list(LABELS)}, title=title).update_traces(marker={"size": 12})


def head_list(heads: pd.DataFrame, mask) -> str:
    """``L1H2:previous-token(1), ...`` for the selected rows (offset shown for offset heads)."""
    rows = heads[mask]
    return ", ".join(
        f"L{r.layer}H{r.head}:{r.primary}" + (f"({r.offset})" if r.offset >= 0 else "") for r in rows.itertuples()
    ) or "none"


__all__ = ["HeadThresholds", "LABELS", "OFFSET_LABELS", "OFFSET_TRAITS", "POSITIONAL_LABELS", "POSITIONAL_TRAITS",
           "PRIMARY_ORDER", "STATISTICS", "TRAITS", "head_list", "head_traits", "label", "label_table", "primary_figure", "primary_label", "sink_trait",
           "thresholds_of", "trait_counts"]
