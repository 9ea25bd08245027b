"""DoPE: per-band matrix entropy, truncated effective rank, and DoPE's band-masking selection.

Seed paper: Jing Xiong, Liyang Fan, et al., "DoPE: Denoising Rotary Position Embedding",
arXiv:2511.09146 v1 (read from the text at commotum/4D:Notes/Vision/pdfs-3/2025_DoPE.txt).
Equation numbers below are v1's.

Per attention head h, with the RoPE-rotated keys (or queries) K ∈ R^{N×d} (Eq. 12; "post_rope"
in the paper's tables; the functions here accept any [N, d] matrix, so pre-RoPE q/k work too):

* band Gram (Eq. 23):        Σ_{h,f} = Σ_j k_j^(f) k_j^(f)ᵀ ∈ R^{2×2}, k^(f) = band f's 2 coordinates
* trace-normalised (Eq. 24): Σ̃_{h,f} = Σ_{h,f} / tr Σ_{h,f}
* band entropy (Eq. 25):     H_{h,f} = −tr(Σ̃ log Σ̃) = −Σ_i p_i log p_i over Σ̃'s two eigenvalues, ∈ [0, log 2]
* head entropy (Eq. 26):     H_h = mean_f H_{h,f}                            ∈ [0, log 2]
* truncated effective rank (Eq. 30): with λ_1 ≥ λ_2 ≥ … the eigenvalues of the head's
  (trace-normalised) Gram Σ̃_h, ρ_h^r = exp(−Σ_{i≤r} p_i log p_i), p_i = λ_i / Σ_{j≤r} λ_j.

Two readings had to be settled:

* **Which matrix for ρ_h^r.** Eq. 30 takes the eigenvalues "of Σ̃_h" with r ∈ {1, 8, 16, 32, 64}
  and §5.5 projects on "the full 128 hidden-dimensional eigenvalues" of a head, so Σ_h is the
  full d×d Gram KᵀK of the head (a 2×2 band Gram has only two eigenvalues). Implemented so.
  Note that Eq. 30 at r = 1 is identically 1 (p_1 = 1); the paper reads Trunc-1 as "equivalent
  to the spectral norm σ_max(Σ)" (§5.2). ``spectral_share`` gives λ_1 / tr Σ for that reading.
* **Pairing.** The paper pairs dims (2f, 2f+1); HuggingFace models (and posbench, see
  ``posbench.reduce.rotary_pairs``) rotate pairs (f, f + d/2). We use the HF pairing.

The masking selection (§4.3): heads are ranked globally over layers × heads by H_h ("Full" /
vanilla) or ρ_h^r ("Trunc-r"), ascending or descending, and the first n are denoised:

* by-parts (Eqs. 32-34): in the selected heads, mask the bands on one side of θ = 2π/L_train.
  The paper is inconsistent about the side: Eqs. 32/34 keep θ_f ≤ θ (remove the *high*
  frequencies) while Fig. 1 and the text remove the low-frequency bands (freq < θ), which are
  the coherent "spike" bands of §4.2. Default ``parts="low"`` follows Fig. 1 and the text;
  ``parts="high"`` is the literal Eq. 32/34.
* by-all (Eq. 35): multiply the head's rotated q and k by 0 (all pairs).
* by-Gaussian (Eqs. 36-37): replace the head's rotated q and k by N(0, σ²), σ² matching the
  empirical variance. (Eq. 31 and Eq. 35 also disagree on whether m_h = 1 means "remove";
  we follow the selection order, which is unambiguous.)

The paper gives no band-level outlier rule (its by-parts bands are chosen by frequency, not by
entropy); ``outlier_bands`` is posbench's own robust rule, documented in docs/rope-theory.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..card import ModelCard
from ..reduce import rotary_pairs
from ..sites import Capture, Context
from .base_bounds import rope_inv_freq

LOG2 = math.log(2.0)
VARIANTS = ("by-parts", "by-all", "by-gaussian")


# ---------------------------------------------------------------------------- band entropy (Eqs. 23-26)

def band_gram(x: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Per-band 2×2 Gram sums (Eq. 23): x [..., N, d] -> [..., n_pairs, 2, 2] (float64)."""
    pairs = rotary_pairs(x.to(torch.float64), n_pairs)  # [..., N, P, 2]
    return torch.einsum("...npi,...npj->...pij", pairs, pairs)


def band_entropy_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Matrix entropy (Eqs. 24-25) of symmetric PSD 2×2 matrices [..., 2, 2] -> [...], in nats.

    Closed form: with t = tr Σ, s = sqrt((a − c)² + 4b²) / t ∈ [0, 1], the normalised eigenvalues
    are p_1 = (1 + s)/2 and p_2 = det(Σ)/(t² p_1) (the product form keeps a near-rank-1 band
    accurate). Zero bands (t = 0) have no spectrum: NaN.
    """
    g = g.to(torch.float64)
    a, b, c = g[..., 0, 0], 0.5 * (g[..., 0, 1] + g[..., 1, 0]), g[..., 1, 1]
    t = a + c
    ok = t > 0
    safe_t = torch.where(ok, t, torch.ones_like(t))
    s = (torch.sqrt((a - c) ** 2 + 4 * b * b) / safe_t).clamp(0.0, 1.0)
    p1 = 0.5 * (1.0 + s)
    p2 = ((a * c - b * b) / (safe_t * safe_t) / p1).clamp(0.0, 0.5)
    h = -(torch.special.xlogy(p1, p1) + torch.special.xlogy(p2, p2))
    return torch.where(ok, h.clamp(0.0, LOG2), torch.full_like(h, float("nan")))


def band_entropy(x: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """H_{h,f} (Eq. 25) of every rotary band: x [N, d] or [H, N, d] -> [..., n_pairs], nats in [0, log 2].

    Pairs follow HF's rotate-half layout (pair f = dims f, f + n_pairs); dims past 2*n_pairs
    (partial rotary) are ignored. A band that is zero at every position gives NaN.
    """
    return band_entropy_from_gram(band_gram(x, n_pairs))


def head_entropy(band_entropies: torch.Tensor) -> torch.Tensor:
    """H_h (Eq. 26): mean over bands [..., P] -> [...], skipping zero (NaN) bands."""
    return torch.nanmean(band_entropies, dim=-1)


# ---------------------------------------------------------------------------- truncated effective rank (Eq. 30)

def gram(x: torch.Tensor) -> torch.Tensor:
    """Head Gram KᵀK: x [..., N, d] -> [..., d, d] (float64)."""
    x = x.to(torch.float64)
    return x.transpose(-1, -2) @ x


def _eigenvalues_desc(g: torch.Tensor) -> torch.Tensor:
    g = 0.5 * (g + g.transpose(-1, -2))
    return torch.linalg.eigvalsh(g.to(torch.float64)).flip(-1).clamp(min=0.0)


def truncated_effective_rank_from_gram(g: torch.Tensor, r: int) -> torch.Tensor:
    """ρ^r (Eq. 30) from a Gram/covariance [..., d, d]: exp of the entropy of the top-r
    eigenvalues renormalised to sum 1. r > d uses all d. A zero matrix gives NaN.

    Trace normalisation (Eq. 24) cancels in p_i, so Σ and Σ̃ give the same ρ. r = 1 gives 1.
    """
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    lam = _eigenvalues_desc(g)[..., :r]
    total = lam.sum(-1, keepdim=True)
    ok = total[..., 0] > 0
    p = lam / torch.where(total > 0, total, torch.ones_like(total))
    rho = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return torch.where(ok, rho, torch.full_like(rho, float("nan")))


def truncated_effective_rank(x: torch.Tensor, r: int) -> torch.Tensor:
    """ρ_h^r (Eq. 30) of x [N, d] or [H, N, d] -> [] or [H], from the full d×d Gram of each head."""
    return truncated_effective_rank_from_gram(gram(x), r)


def spectral_share(g: torch.Tensor) -> torch.Tensor:
    """λ_1 / tr Σ of a Gram [..., d, d]: the spectral-norm reading of the paper's "Trunc-1"."""
    lam = _eigenvalues_desc(g)
    total = lam.sum(-1)
    return torch.where(total > 0, lam[..., 0] / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.full_like(total, float("nan")))


def band_grams_from_gram(g: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """The 2×2 band blocks of a full Gram [..., d, d] -> [..., n_pairs, 2, 2] (HF pairing)."""
    idx = torch.arange(n_pairs, device=g.device)
    other = idx + n_pairs
    aa, bb, ab = g[..., idx, idx], g[..., other, other], g[..., idx, other]
    row0 = torch.stack([aa, ab], dim=-1)
    row1 = torch.stack([ab, bb], dim=-1)
    return torch.stack([row0, row1], dim=-2)


# ---------------------------------------------------------------------------- folding over batches

@dataclass
class GramSummary:
    """What a GramAccumulator holds once finished (all float64, on the device it saw)."""

    n_tokens: int
    n_pairs: int
    band_gram: torch.Tensor  # [H, P, 2, 2]
    gram: torch.Tensor | None = None  # [H, d, d] when accumulated with full=True
    band_entropy: torch.Tensor = field(init=False)  # [H, P]
    head_entropy: torch.Tensor = field(init=False)  # [H]

    def __post_init__(self):
        self.band_entropy = band_entropy_from_gram(self.band_gram)
        self.head_entropy = head_entropy(self.band_entropy)

    def truncated_effective_rank(self, r: int) -> torch.Tensor:
        if self.gram is None:
            raise ValueError("truncated effective rank needs the full Gram: accumulate with full=True")
        return truncated_effective_rank_from_gram(self.gram, r)

    def spectral_share(self) -> torch.Tensor:
        if self.gram is None:
            raise ValueError("spectral share needs the full Gram: accumulate with full=True")
        return spectral_share(self.gram)


class GramAccumulator:
    """Running Gram sums per head, so a probe can fold DoPE's statistics over batches while hooks
    fire, without keeping K. Sums are float64; the result equals the one-shot computation on the
    concatenated tokens (Gram sums are additive).

    ``full=True`` keeps the d×d Gram per head (needed for ρ^r; d² floats per head), else only
    the per-band 2×2 sums (4·P floats per head). Under GQA pass n_heads = n_kv_heads for keys.
    """

    def __init__(self, n_heads: int, head_dim: int, n_pairs: int | None = None, full: bool = True):
        self.n_heads, self.head_dim = int(n_heads), int(head_dim)
        self.n_pairs = int(n_pairs if n_pairs is not None else head_dim // 2)
        if not 0 < 2 * self.n_pairs <= self.head_dim:
            raise ValueError(f"n_pairs={self.n_pairs} does not fit head_dim={self.head_dim}")
        self.full = bool(full)
        self.n_tokens = 0
        self._band: torch.Tensor | None = None
        self._gram: torch.Tensor | None = None

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> "GramAccumulator":
        """Fold in x [H, N, d] (or [N, d] when n_heads == 1); ``mask`` [N] keeps True tokens."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[0] != self.n_heads or x.shape[-1] != self.head_dim:
            raise ValueError(f"expected [{self.n_heads}, N, {self.head_dim}], got {tuple(x.shape)}")
        x = x.detach().to(torch.float64)
        if mask is not None:
            mask = mask.to(device=x.device, dtype=torch.bool).reshape(-1)
            if mask.numel() != x.shape[1]:
                raise ValueError(f"mask has {mask.numel()} entries for {x.shape[1]} tokens")
            x = x[:, mask]
        if self.full:
            g = gram(x)
            self._gram = g if self._gram is None else self._gram + g.to(self._gram.device)
        else:
            b = band_gram(x, self.n_pairs)
            self._band = b if self._band is None else self._band + b.to(self._band.device)
        self.n_tokens += int(x.shape[1])
        return self

    def update_hook(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> "GramAccumulator":
        """Fold in a hook tensor [batch, pos, heads, d_head] (the ``rot_k`` site etc.), dropping padding."""
        if x.dim() != 4:
            raise ValueError(f"expected [batch, pos, heads, d_head], got {tuple(x.shape)}")
        flat = x.permute(2, 0, 1, 3).reshape(x.shape[2], -1, x.shape[3])
        return self.update(flat, None if attention_mask is None else attention_mask.reshape(-1))

    def merge(self, other: "GramAccumulator") -> "GramAccumulator":
        """Add another accumulator's sums (e.g. from another worker) into this one."""
        if (other.n_heads, other.head_dim, other.n_pairs, other.full) != (self.n_heads, self.head_dim, self.n_pairs, self.full):
            raise ValueError("accumulators differ in shape or mode")
        for name in ("_band", "_gram"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs.clone() if mine is None else mine + theirs.to(mine.device))
        self.n_tokens += other.n_tokens
        return self

    def finish(self) -> GramSummary:
        if self.n_tokens == 0:
            raise ValueError("no tokens were accumulated")
        if self.full:
            band = band_grams_from_gram(self._gram, self.n_pairs)
            return GramSummary(self.n_tokens, self.n_pairs, band, self._gram)
        return GramSummary(self.n_tokens, self.n_pairs, self._band, None)


def gram_capture(site: str) -> Capture:
    """Fold DoPE's Gram sums of ``rot_q`` or ``rot_k`` while hooks fire, as a pure reduction: one
    ``GramAccumulator`` (float64, padding dropped, full d x d) per batch and layer, for the caller
    to ``merge`` (Gram sums are additive). Its name is ``gram_<site>``."""

    def reduce(x: torch.Tensor, ctx: Context) -> GramAccumulator:
        return GramAccumulator(x.shape[2], ctx.facts.d_head, ctx.facts.n_pairs, full=True).update_hook(
            x, ctx.batch.attention_mask)

    return Capture(f"gram_{site}", site, reduce)


def merge_grams(outputs, name: str) -> dict[int, GramAccumulator]:
    """Per layer, the merged accumulators of capture ``name`` over a list of run outputs."""
    merged: dict[int, GramAccumulator] = {}
    for out in outputs:
        for layer, acc in out[name].items():
            merged[layer] = acc if layer not in merged else merged[layer].merge(acc)
    return merged


# ---------------------------------------------------------------------------- tables

def band_entropy_table(summaries: Mapping[int, GramSummary], indicator: str = "k",
                       inv_freq: Mapping[int, Sequence[float] | torch.Tensor] | None = None) -> pd.DataFrame:
    """Long table: layer, head, indicator, band, entropy (nats)[, freq] from per-layer summaries.
    ``head`` is a KV head when indicator == "k" (keys have n_kv_heads), a query head for "q"."""
    rows = []
    for layer, s in sorted(summaries.items()):
        ent = s.band_entropy.cpu().numpy()
        freq = None if inv_freq is None or layer not in inv_freq else np.asarray(torch.as_tensor(inv_freq[layer]).cpu(), dtype=float)
        for head in range(ent.shape[0]):
            for band in range(ent.shape[1]):
                row = {"layer": layer, "head": head, "indicator": indicator, "band": band, "entropy": float(ent[head, band])}
                if freq is not None:
                    row["freq"] = float(freq[band])
                rows.append(row)
    cols = ["layer", "head", "indicator", "band", "entropy"] + (["freq"] if inv_freq is not None else [])
    return pd.DataFrame(rows, columns=cols)


def head_score_table(summaries: Mapping[int, GramSummary], ranks: Sequence[int] = (4, 8, 16, 32),
                     indicator: str = "k") -> pd.DataFrame:
    """Per (layer, head): n_tokens, entropy (H_h, Eq. 26), spectral_share, trunc_rank_{r} (Eq. 30)."""
    rows = []
    for layer, s in sorted(summaries.items()):
        h = s.head_entropy.cpu().numpy()
        extra = {}
        if s.gram is not None:
            extra["spectral_share"] = s.spectral_share().cpu().numpy()
            for r in ranks:
                extra[f"trunc_rank_{r}"] = s.truncated_effective_rank(r).cpu().numpy()
        for head in range(h.shape[0]):
            rows.append({"layer": layer, "head": head, "indicator": indicator, "n_tokens": s.n_tokens,
                         "entropy": float(h[head]), **{k: float(v[head]) for k, v in extra.items()}})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- outlier bands

def outlier_bands(entropy_table: pd.DataFrame, k: float = 3.0, min_drop: float = 0.05,
                  by: Sequence[str] = ("layer", "head"), column: str = "entropy") -> pd.DataFrame:
    """Flag bands whose entropy is a low outlier within their head (posbench's rule; the paper
    has none at band level).

    Per group (default: each layer × head), with m the median and MAD the median absolute
    deviation of the band entropies, a band is an outlier when

        entropy < m − max(k · 1.4826 · MAD, min_drop)

    i.e. more than k robust standard deviations below the head's typical band, and at least
    ``min_drop`` nats below it (so a head whose bands are all isotropic, MAD ≈ 0, does not flag
    rounding noise). Only the low side is flagged: low entropy is the coherent "spike" of §4.2.
    NaN (zero) bands are never outliers. Returns a copy with columns median, mad, robust_z
    ((entropy − m) / (1.4826 · MAD); ±inf when MAD = 0) and outlier.
    """
    out = entropy_table.copy()
    keys = list(by)
    med = out.groupby(keys, sort=False)[column].transform("median")
    mad = (out[column] - med).abs().groupby([out[c] for c in keys], sort=False).transform("median")
    scale = 1.4826 * mad
    out["median"], out["mad"] = med, mad
    diff = out[column] - med
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(scale > 0, diff / scale.where(scale > 0, 1.0), np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
    out["robust_z"] = z
    threshold = med - np.maximum(k * scale, min_drop)
    out["outlier"] = (out[column] < threshold).fillna(False).astype(bool)
    return out


# ---------------------------------------------------------------------------- DoPE masking selection

@dataclass(frozen=True)
class BandMask:
    """One head's DoPE mask, as plain data that maps onto ``rope-zero-band``.

    ``heads`` are query heads (rope-zero-band's ``heads=``; a k target reaches their KV head);
    ``pairs`` are HF rotate-half pair indices; ``mode`` "zero" (by-parts, by-all) or "gaussian"
    (by-Gaussian: rope-zero-band cannot do that, the lead's intervention must draw the noise).
    """

    layer: int
    heads: tuple[int, ...]
    pairs: tuple[int, ...]
    mode: str
    target: str
    variant: str
    indicator: str
    selected_head: int
    score: float

    def intervention_spec(self) -> str:
        """The ``rope-zero-band`` option string, e.g. ``pairs=20-31;layers=3;heads=0-2;target=qk``."""
        if self.mode != "zero":
            raise ValueError(f"rope-zero-band only zeroes; a {self.mode!r} mask needs its own intervention")
        return f"pairs={_ranges(self.pairs)};layers={self.layer};heads={_ranges(self.heads)};target={self.target}"


def _ranges(values: Sequence[int]) -> str:
    values = sorted(set(int(v) for v in values))
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)


def select_heads(head_table: pd.DataFrame, n_heads: int, metric: str = "entropy", order: str = "asc") -> pd.DataFrame:
    """DoPE's head selection: rank all layers × heads globally by ``metric`` ("entropy" for the
    paper's Full/vanilla, "trunc_rank_{r}" for Trunc-r, or "spectral_share"), ``order`` "asc"
    (lowest first, the paper's ASC) or "desc", and keep the first ``n_heads`` (the paper: 1-32).
    NaN scores are never selected. Returns those rows with a ``score`` column and ``rank``."""
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
    if metric not in head_table.columns:
        raise ValueError(f"no column {metric!r}; have {list(head_table.columns)}")
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    table = head_table[head_table[metric].notna()].copy()
    table["score"] = table[metric]
    table = table.sort_values(["score", "layer", "head"], ascending=[order == "asc", True, True], kind="stable")
    out = table.head(n_heads).reset_index(drop=True)
    out["rank"] = np.arange(len(out))
    out["metric"] = metric
    return out


def _layer_freqs(card: ModelCard, layer: int, inv_freq: Mapping[int, Sequence[float] | torch.Tensor] | None) -> np.ndarray:
    if inv_freq is not None and layer in inv_freq:
        return np.asarray(torch.as_tensor(inv_freq[layer]).detach().cpu(), dtype=np.float64)
    base = card.rope_bases[layer] if layer < len(card.rope_bases) else None
    if base is None:
        raise ValueError(f"layer {layer} has no RoPE base")
    rope_type = card.rope_types[layer] if layer < len(card.rope_types) else None
    if rope_type not in (None, "default"):
        raise ValueError(f"layer {layer} uses {rope_type} RoPE scaling: pass its inv_freq (model.rotary_inv_freq(layer))")
    return rope_inv_freq(base, card.rotary_dims or card.head_dim)


def dope_masks(
    selected: pd.DataFrame,
    variant: str,
    card: ModelCard,
    *,
    train_length: int | None = None,
    parts: str = "low",
    target: str = "qk",
    inv_freq: Mapping[int, Sequence[float] | torch.Tensor] | None = None,
) -> list[BandMask]:
    """DoPE's masks for the heads ``select_heads`` chose.

    * ``variant="by-parts"``: pairs on one side of θ = 2π / train_length (default: the card's
      context length); ``parts="low"`` masks freq < θ (Fig. 1, the text), ``"high"`` masks
      freq > θ (Eqs. 32/34 taken literally). Heads with no such pair get no mask.
    * ``"by-all"``: every rotary pair, zeroed (Eq. 35).
    * ``"by-gaussian"``: every rotary pair, mode "gaussian" (Eqs. 36-37).

    Rows with indicator "k" name a KV head: the mask covers all its query heads. Frequencies are
    the layer's default-RoPE ``inv_freq`` from the card, or ``inv_freq[layer]`` when given
    (required for llama3/YaRN-scaled layers).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if parts not in ("low", "high"):
        raise ValueError(f"parts must be 'low' or 'high', got {parts!r}")
    if target not in ("q", "k", "qk"):
        raise ValueError(f"target must be q, k or qk, got {target!r}")
    n_pairs = (card.rotary_dims or card.head_dim) // 2
    if variant == "by-parts":
        length = train_length or card.context_length
        if not length:
            raise ValueError("by-parts needs train_length (the card has no context length)")
        theta = 2 * math.pi / float(length)
    masks: list[BandMask] = []
    for row in selected.itertuples(index=False):
        layer, head = int(row.layer), int(row.head)
        indicator = getattr(row, "indicator", "q")
        if indicator == "k":
            heads = tuple(h for h in range(card.n_heads) if card.kv_head_of(h) == head)
        else:
            heads = (head,)
        if variant == "by-parts":
            freq = _layer_freqs(card, layer, inv_freq)[:n_pairs]
            chosen = np.nonzero(freq < theta if parts == "low" else freq > theta)[0]
            if chosen.size == 0:
                continue
            pairs, mode = tuple(int(p) for p in chosen), "zero"
        else:
            pairs, mode = tuple(range(n_pairs)), ("zero" if variant == "by-all" else "gaussian")
        masks.append(BandMask(layer=layer, heads=heads, pairs=pairs, mode=mode, target=target, variant=variant,
                              indicator=indicator, selected_head=head, score=float(getattr(row, "score", float("nan")))))
    return masks


__all__ = [
    "LOG2", "VARIANTS", "band_gram", "band_entropy_from_gram", "band_entropy", "head_entropy", "gram",
    "truncated_effective_rank_from_gram", "truncated_effective_rank", "spectral_share", "band_grams_from_gram",
    "GramSummary", "GramAccumulator", "gram_capture", "merge_grams", "band_entropy_table", "head_score_table",
    "outlier_bands", "BandMask", "select_heads", "dope_masks",
]
