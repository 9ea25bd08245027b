"""RoPE frequency usage: which rotary frequencies each head uses, and for what.

Per layer x query head x rotary pair (HF rotate-half layout: pair p = dims p and p + r/2, r the
rotary dims; frequencies from the layer's own ``inv_freq``):

* q/k **energy** per pair, mean |q_p|^2 (Barbero et al., "Round and Round We Go! What makes Rotary
  Positional Encodings useful?", ICLR 2025, plot the pair norms |q_p|, kept as ``q_norm``): the
  squared pair norms add up to the head's |q|^2, so band shares are shares of energy;
* each pair's exact share of the pre-softmax score, s_ij = sum_p s_ij^(p) (+ non-rotary dims),
  attention-weighted (sums over pairs to the expected score) and on each query's top key;
* heads grouped by the shared taxonomy (``posbench.heads``), computed in this probe's own passes
  with the same functions as positional-heads (random tokens and repeated halves are two small
  extra passes; the natural-text pass is shared), so no positional-heads run is needed;
* Barbero's q ~ k test: at each head's own offset d*, the cosine between q_i and k_{i-d*} in the
  lowest / highest quarter of frequencies, and the score against its Cauchy-Schwarz bound;
* DoPE (Xiong et al. 2025): band entropy and truncated effective rank of the rotated q and k per
  head (``posbench.rope_theory.dope``), low-outlier bands, and how they sit with the sink heads;
* the p-RoPE band test (loss and offset-head scores with the lowest / highest band position-free)
  with each band's turn across the evaluated span, and the RoPE-base feasibility of the config
  (Liu 2026; ``posbench.rope_theory.base_bounds``, no forward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from posbench import data as pdata
from posbench.batching import run_batches
from posbench.errors import BadOptionError, PosbenchError
from posbench.head_statistics import HeadInputs, measure_head_statistics
from posbench.heads import OFFSET_LABELS, POSITIONAL_LABELS, HeadThresholds, head_list, head_traits, thresholds_of
from posbench.interventions.rope_bands import RopePositionFree
from posbench.options import option
from posbench.progress import Progress
from posbench.protocols import Probe
from posbench.rope_theory import base_feasibility
from posbench.rope_theory.dope import band_entropy_table, gram_capture, head_score_table, merge_grams, outlier_bands
from posbench.sites import AttentionCapture

from .bands import band_effects, band_result, baseline_captures, pair_table
from .statistics import RopeUsageStatistic

QK_BANDS = ("low", "high", "all")
DOPE_RANKS = (8, 32)


@dataclass
class RopeUsageConfig(HeadThresholds):
    seq_len: int = option(128, min=8, counts="tokens", help="tokens per sequence")
    n_sequences: int = option(8, min=1, counts="sequences", help="natural-text sequences")
    taxonomy_len: int = option(128, min=8, counts="tokens", help="tokens per sequence of the head-taxonomy passes (at most seq_len); "
                               "a longer seq_len gets its own natural-text pass for the frequency statistics")
    n_random: int = option(8, min=2, counts="sequences", help="random-token sequences for the head taxonomy (compared in pairs)")
    n_repeated: int = option(4, min=1, counts="sequences", help="repeated random sequences for the taxonomy's induction / duplicate scores")
    repeat_len: int = option(32, min=2, max=65_536, help="length of the random half that is repeated")
    max_offset: int = option(32, min=0, help="d* (the offset where q ~ k is read) is the random-token profile's peak in 0..max_offset")
    batch_size: int = option(4, min=1, counts="batch", help="sequences per forward (the random-token pass, compared in pairs, uses an even number, at least 2)")
    high_freq_wavelength: float = option(32.0, min=0.0, help="pairs with a shorter wavelength (tokens) count as high frequency")
    position_free_rotation: float = option(math.pi / 8, min=0.0, help="a pair turning less than this (rad) across a span is position-free there")
    band_fractions: tuple[float, ...] = option((0.25,), min=0.0, max=1.0, help="p-RoPE bands evaluated (lowest and highest fraction)")
    dope_outlier_k: float = option(3.0, min=0.0, help="DoPE band outlier: entropy below the head median by k robust SDs")
    padding_side: str = option("right", choices=("left", "right"))
    seed: int = option(0, min=0)


def _quarters(model, layer: int) -> dict[str, torch.Tensor]:
    """The lowest / highest quarter of a layer's frequencies (the pairs the 0.25 p-RoPE bands take) and all pairs."""
    low = RopePositionFree(fraction=0.25).pairs_for(model, layer)
    high = RopePositionFree(fraction=0.25, highest=True).pairs_for(model, layer)
    return {"low": torch.tensor(low), "high": torch.tensor(high), "all": torch.arange(model.n_pairs)}


def _share(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(-1, keepdim=True).clamp(min=1e-12)


class RopeUsageProbe(Probe):
    name = "rope-usage"
    work_factor = 4.7  # time estimate: cost per planned token (benchmarks/estimate_factors.py)
    summary = "rotary frequency usage per head (energy, exact score shares, q ~ k, DoPE entropy), p-RoPE bands, base feasibility"
    Config = RopeUsageConfig
    default_data_options = ("n_sequences",)

    @classmethod
    def not_applicable(cls, model):
        if model.card.position_encoding != "rope":
            return f"{model.model_id} uses {model.card.position_encoding} positions, not RoPE"
        return None

    def check_config(self) -> None:
        c = self.config
        if any(not 0 < f <= 1 for f in c.band_fractions):
            raise BadOptionError("band_fractions must lie in (0, 1]")
        if c.n_random % 2:
            raise BadOptionError("n_random must be an even number >= 2 (sequences are compared in pairs)")

    def measure(self, model, data, progress=False):
        c = self.config
        if model.card.position_encoding != "rope":
            raise PosbenchError(
                f"rope-usage needs a RoPE model; {model.model_id} uses {model.card.position_encoding} "
                "positions (try smollm2-135m-instruct or gemma-3-270m)"
            )
        texts = pdata.natural_texts()[: c.n_sequences] if data is None else ([data] if isinstance(data, str) else list(data))
        head_len = min(c.seq_len, c.taxonomy_len)
        inputs = HeadInputs.build(model, texts, head_len, c.n_random, c.n_repeated, c.repeat_len, c.seed)
        natural = pdata.natural_sequences(model, texts, c.seq_len, warn=data is not None)
        natural = inputs.natural if natural == inputs.natural else natural
        model.check_lengths(natural)
        L = model.n_layers
        bands = {layer: _quarters(model, layer) for layer in range(L)}
        own_pass = natural is not inputs.natural
        bar = Progress(len(inputs) + len(natural) * (own_pass + 2 * len(c.band_fractions)),
                       f"rope usage on {model.model_id}", enabled=progress)
        offsets: dict[str, torch.Tensor] = {}

        def usage_captures(profile_random, band_heads=None):
            offsets["d"] = profile_random[..., : c.max_offset + 1].argmax(-1)
            return [AttentionCapture("usage", RopeUsageStatistic(offsets["d"], bands)),
                    gram_capture("rot_q"), gram_capture("rot_k"),
                    *(baseline_captures(band_heads) if c.band_fractions else [])]

        # the pass over `natural` with the frequency statistics is also the band test's baseline
        stats = measure_head_statistics(model, inputs, batch_size=c.batch_size, padding_side=c.padding_side,
                                        progress=bar, window=c.window,
                                        natural_captures=None if own_pass else usage_captures)
        heads = head_traits(stats.table, thresholds_of(c))
        offset_heads = [(int(r.layer), int(r.head), int(r.offset)) for r in heads.itertuples()
                        if r.primary in OFFSET_LABELS]
        outputs = stats.natural_outputs
        if own_pass:  # long sequences: the frequency statistics get their own pass at seq_len
            captures = usage_captures(stats.profile_random, offset_heads)
            outputs = [out.captured for _, _, out in run_batches(model, natural, captures, batch_size=c.batch_size,
                                                                 padding_side=c.padding_side, progress=bar)]
        usage, grams = _fold(outputs, L)
        pairs = pair_table(model, max(len(s) for s in natural), c.position_free_rotation)
        heads, head_pairs = self._usage_tables(model, heads, pairs, usage, offsets["d"], bands)
        dope_bands, dope_heads = self._dope_tables(model, grams, heads)
        feasibility = base_feasibility(model.card)
        feasibility["layers"] = feasibility["layers"].map(lambda x: ",".join(map(str, x)))
        tables = {"heads": heads, "head_pairs": head_pairs, "pairs": pairs, "dope_bands": dope_bands,
                  "dope_heads": dope_heads, "base_feasibility": feasibility}
        if c.band_fractions:
            baseline = band_result(outputs, offset_heads, None if own_pass else stats.profile_natural)
            tables["band_effects"], tables["band_turns"] = band_effects(
                model, natural, offset_heads, pairs, c.band_fractions, batch_size=c.batch_size,
                padding_side=c.padding_side, bar=bar, baseline=baseline)
        bar.close()
        summary = self._summary(model, tables)
        record = {**inputs.record(), "seq_len": c.seq_len, "taxonomy_len": head_len, "bos_prepended": model.card.adds_bos}
        if own_pass:
            record["tokens"]["natural_long"] = natural
        return tables, summary, record

    # ------------------------------------------------------------------ tables
    def _usage_tables(self, model, heads, pairs, usage, d_star, bands):
        c = self.config
        L, H, P = model.n_layers, model.n_heads, model.n_pairs
        tok = usage["tokens"].clamp(min=1)[:, None, None]
        q_norm, k_norm = usage["q_norm"] / tok, usage["k_norm"] / tok
        q_energy, k_energy = usage["q_energy"] / tok, usage["k_energy"] / tok
        q_share, k_share = _share(q_energy), _share(k_energy)
        contrib = usage["contrib"] / tok
        abs_share, top_share = _share(usage["contrib_abs"]), _share(usage["top_abs"])
        extra, pair_rows = [], []
        for layer in range(L):
            mine = pairs[pairs.layer == layer].sort_values("pair")
            freq, wl = mine.inv_freq.to_numpy(), torch.tensor(mine.wavelength.to_numpy(), dtype=torch.float32)
            high = wl < c.high_freq_wavelength
            low_q, high_q = bands[layer]["low"], bands[layer]["high"]
            for head in range(H):
                row = {
                    "q_energy_share_low_quarter": float(q_share[layer, head, low_q].sum()),
                    "q_energy_share_high_quarter": float(q_share[layer, head, high_q].sum()),
                    "k_energy_share_low_quarter": float(k_share[layer, head, low_q].sum()),
                    "k_energy_share_high_quarter": float(k_share[layer, head, high_q].sum()),
                    "q_energy_share_non_rotary": float(q_share[layer, head, P]),
                    "top_key_share_high_freq": float(top_share[layer, head, :P][high].sum()),
                    "score_share_high_freq": float(abs_share[layer, head, :P][high].sum()),
                    "score_share_non_rotary": float(abs_share[layer, head, P]),
                    "expected_score": float(contrib[layer, head].sum()),
                    "dominant_pair": int(top_share[layer, head, :P].argmax()),
                    "qk_offset": int(d_star[layer, head]),
                }
                for band in QK_BANDS:
                    n = float(usage[f"qk_n[{band}]"][layer, head])
                    cos_n = float(usage[f"qk_cos_n[{band}]"][layer, head])
                    bound = float(usage[f"qk_bound[{band}]"][layer, head])
                    dot = float(usage[f"qk_dot[{band}]"][layer, head])
                    row[f"qk_cos_{band}"] = float(usage[f"qk_cos[{band}]"][layer, head]) / cos_n if cos_n else math.nan
                    row[f"qk_bound_ratio_{band}"] = dot / bound if bound > 0 else math.nan
                    if band == "all":
                        row["qk_score"] = dot / n if n else math.nan
                        row["qk_bound"] = bound / n if n else math.nan
                extra.append(row)
                for p in range(P):
                    pair_rows.append((layer, head, model.card.kv_head_of(head), p, float(freq[p]),
                                      float(wl[p]), float(q_norm[layer, head, p]), float(k_norm[layer, head, p]),
                                      float(q_energy[layer, head, p]), float(k_energy[layer, head, p]),
                                      float(q_share[layer, head, p]), float(contrib[layer, head, p]),
                                      float(abs_share[layer, head, p]), float(top_share[layer, head, p])))
        head_pairs = pd.DataFrame(pair_rows, columns=[
            "layer", "head", "kv_head", "pair", "inv_freq", "wavelength", "q_norm", "k_norm", "q_energy", "k_energy",
            "q_energy_share", "score_contribution", "score_share", "top_key_share"])
        return pd.concat([heads.reset_index(drop=True), pd.DataFrame(extra)], axis=1), head_pairs

    def _dope_tables(self, model, grams, heads):
        """Band entropies of rotated q (query heads) and k (KV heads) with low outliers flagged, and
        per-head entropy / spectral share / truncated rank next to the head's sink statistics."""
        c = self.config
        freqs = {layer: model.rotary_inv_freq(layer) for layer in range(model.n_layers)}
        band_tables, head_tables = [], []
        for indicator in ("q", "k"):
            summaries = {layer: acc.finish() for layer, acc in grams[indicator].items()}
            band_tables.append(outlier_bands(band_entropy_table(summaries, indicator, freqs), k=c.dope_outlier_k))
            head_tables.append(head_score_table(summaries, DOPE_RANKS, indicator))
        bands = pd.concat(band_tables, ignore_index=True)
        table = pd.concat(head_tables, ignore_index=True)
        # which query heads each row covers: itself for q, its group for k
        by_query = heads.set_index(["layer", "head"])
        kv = heads.groupby(["layer", "kv_head"])
        rows = []
        for r in table.itertuples():
            if r.indicator == "q":
                h = by_query.loc[(r.layer, r.head)]
                rows.append({"alpha0_natural": float(h.alpha0_natural), "sink_share": float(h.sink), "primary": h.primary})
            else:
                g = kv.get_group((r.layer, r.head))
                rows.append({"alpha0_natural": float(g.alpha0_natural.mean()), "sink_share": float(g.sink.mean()),
                             "primary": ",".join(sorted(set(g.primary)))})
        out = pd.concat([table, pd.DataFrame(rows)], axis=1)
        counts = bands.groupby(["indicator", "layer", "head"]).outlier.sum().rename("outlier_bands").reset_index()
        return bands, out.merge(counts, on=["indicator", "layer", "head"])

    # ------------------------------------------------------------------ summary
    def _summary(self, model, tables) -> dict[str, Any]:
        heads, pairs = tables["heads"], tables["pairs"]
        out: dict[str, Any] = {}
        out["q_energy_share_lowest_quarter"] = round(float(heads.q_energy_share_low_quarter.mean()), 4)
        out["q_energy_share_highest_quarter"] = round(float(heads.q_energy_share_high_quarter.mean()), 4)
        groups = {"positional": heads.primary.isin(POSITIONAL_LABELS), "sink": heads.primary == "sink",
                  "content": heads.primary == "content", "induction": heads.primary == "induction"}
        for name, mask in groups.items():
            sel = heads[mask]
            out[f"heads_{name}"] = int(len(sel))
            if len(sel):
                out[f"{name}_heads_top_key_share_high_freq"] = round(float(sel.top_key_share_high_freq.mean()), 4)
                out[f"{name}_heads_q_energy_share_low_high"] = (
                    f"{sel.q_energy_share_low_quarter.mean():.3f} / {sel.q_energy_share_high_quarter.mean():.3f}")
        out["positional_heads"] = head_list(heads, groups["positional"])
        offset = heads[heads.primary.isin(OFFSET_LABELS)]
        if len(offset):
            out["offset_heads_qk_cos_high_low"] = f"{offset.qk_cos_high.mean():.3f} / {offset.qk_cos_low.mean():.3f}"
            others = heads[~heads.primary.isin(POSITIONAL_LABELS)]
            out["other_heads_qk_cos_high_low"] = f"{others.qk_cos_high.mean():.3f} / {others.qk_cos_low.mean():.3f}"
            out["offset_heads_qk_bound_ratio_all"] = round(float(offset.qk_bound_ratio_all.mean()), 4)
        for layer_type, sel in pairs.groupby("layer_type", sort=False):
            first = sel[sel.layer == sel.layer.min()]
            out[f"position_free_pairs_{layer_type}"] = (
                f"{int(first.position_free_in_span.sum())} of {len(first)} over the evaluated {int(first.span.iloc[0])} "
                f"tokens, {int(first.position_free_in_context.sum())} over {int(first.context_span.iloc[0])} "
                f"(base {first.rope_base.iloc[0]:g})")
        bands, dheads = tables["dope_bands"], tables["dope_heads"]
        q = dheads[dheads.indicator == "q"]
        out["dope_outlier_bands_q_k"] = f"{int(bands[bands.indicator == 'q'].outlier.sum())} / {int(bands[bands.indicator == 'k'].outlier.sum())}"
        if q.entropy.notna().sum() > 2:
            for col in ("entropy", "spectral_share"):
                rho = q[col].corr(q.alpha0_natural, method="spearman")
                out[f"dope_q_{col}_vs_alpha0_spearman"] = round(float(rho), 4)
        if bands.outlier.any():  # share of the outlier bands below their layer's median frequency
            low_half = bands.freq < bands.groupby("layer").freq.transform("median")
            out["dope_outliers_in_low_frequency_half"] = round(float(low_half[bands.outlier].mean()), 4)
        for _, row in tables["base_feasibility"].iterrows():
            out[f"base_feasible_{row.layer_type}"] = f"{bool(row.feasible)} (margin {row.margin_log10:+.2f} decades)"
        for _, row in tables.get("band_effects", pd.DataFrame(columns=["condition"])).iterrows():
            out[f"loss[{row.condition}]"] = round(float(row.loss), 4)
        return out


def _fold(outputs, L: int):
    """Sum the usage statistic over batches and merge the Gram accumulators per layer."""
    usage: dict[str, Any] = {}
    for out in outputs:
        for layer in range(L):
            for key, value in out["usage"][layer].items():
                if key == "tokens":
                    usage.setdefault(key, torch.zeros(L))[layer] += value
                else:
                    usage.setdefault(key, torch.zeros(L, *value.shape))[layer] += value
    return usage, {indicator: merge_grams(outputs, f"gram_rot_{indicator}") for indicator in ("q", "k")}


__all__ = ["RopeUsageConfig", "RopeUsageProbe"]
