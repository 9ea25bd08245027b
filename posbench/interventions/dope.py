"""``dope`` — DoPE band masking (Xiong et al., "DoPE: Denoising Rotary Position Embedding", 2025).

DoPE ranks heads by the matrix entropy of their rotated q or k (``posbench.rope_theory.dope``:
band entropy, spectral share, truncated effective rank), keeps the ``heads`` lowest (ASC) or
highest (DESC) globally over layers x heads, and in those heads removes rotary bands:

* ``by-parts``: the pairs on one side of theta = 2*pi / train_length (default: the low side,
  Fig. 1 and the text; ``parts=high`` is Eqs. 32/34 taken literally), zeroed;
* ``by-all``: every rotary pair, zeroed (Eq. 35);
* ``by-gaussian``: every rotary pair replaced by N(0, sigma^2) with sigma^2 the calibration
  second moment of that dim (Eqs. 36-37), from a seeded generator.

Zeroing is exactly ``rope-zero-band`` (each mask's ``intervention_spec()``), so this wraps it. The
head statistics come from a **calibration pass** when the intervention is validated (on entering
``model.intervene``): the first ``calibration_texts`` built-in texts cut to ``calibration_len``
tokens, run under the interventions already active. The chosen masks are recorded in ``params()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..batching import run_batches
from ..data import natural_sequences, natural_texts
from ..errors import PosbenchError
from ..limits import MAX_INDEX
from ..options import build, option, parse_spec
from ..protocols import ActivationEdit
from ..rope_theory.dope import VARIANTS, BandMask, dope_masks, gram_capture, head_score_table, merge_grams, select_heads
from ..sites import Edit
from .rope_bands import RopeBandZero

METRICS_HELP = "entropy | spectral_share | trunc_rank_R"


def _metric_problem(metric: str) -> str | None:
    if metric in ("entropy", "spectral_share") or (metric.startswith("trunc_rank_") and metric[11:].isdigit()):
        return None
    return "not a known head score"


@dataclass
class DopeConfig:
    """The options of ``--intervention dope:key=value;...``."""

    heads: int = option(3, min=1, max=MAX_INDEX, help="heads masked, chosen globally over layers x heads")
    variant: str = option("by-parts", choices=VARIANTS, help="by-parts (zero one side of 2*pi/train_length), "
                          "by-all (zero every pair), by-gaussian (replace every pair by seeded noise)")
    metric: str = option("entropy", check=_metric_problem, form=METRICS_HELP, help="the head score heads are ranked by")
    order: str = option("asc", choices=("asc", "desc"), help="asc: the lowest scores (the most coherent heads)")
    indicator: str = option("k", choices=("q", "k"), help="score the rotated queries or keys")
    parts: str = option("low", choices=("low", "high"), help="by-parts: the frequency side that is zeroed")
    target: str = option("qk", choices=("qk", "q", "k"), help="mask q, k or both")
    train_length: int | None = option(None, min=1, max=2**24, help="by-parts: the training length (default: the context)")
    calibration_texts: int = option(8, min=1, max=48, help="built-in texts of the calibration pass")
    calibration_len: int = option(128, min=8, max=65_536, help="tokens per calibration text")
    seed: int = option(0, min=0, help="by-gaussian: the noise seed")


class Dope(ActivationEdit):
    name = "dope"
    showcase = ("sinks", "heads=4")  # DoPE says masking low-entropy bands denoises sinks
    summary = "DoPE: mask rotary bands in the heads with the lowest (or highest) rotated-q/k matrix entropy"
    spec_help = ("heads=N[;variant=by-parts|by-all|by-gaussian][;metric=entropy|spectral_share|trunc_rank_R]"
                 "[;order=asc|desc][;indicator=q|k][;parts=low|high][;target=qk|q|k][;train_length=T]"
                 "  e.g. dope:heads=3;variant=by-parts")
    Config = DopeConfig

    def __init__(self, heads: int = 3, variant: str = "by-parts", metric: str = "entropy", order: str = "asc",
                 indicator: str = "k", parts: str = "low", target: str = "qk", train_length: int | None = None,
                 calibration_texts: int = 8, calibration_len: int = 128, seed: int = 0):
        c = build(self.Config, dict(heads=heads, variant=variant, metric=metric, order=order, indicator=indicator,
                                    parts=parts, target=target, train_length=train_length,
                                    calibration_texts=calibration_texts, calibration_len=calibration_len, seed=seed),
                  owner=f"intervention '{self.name}'")
        self.config = c
        self.heads, self.variant, self.metric, self.order = c.heads, c.variant, c.metric, c.order
        self.indicator, self.parts, self.target = c.indicator, c.parts, c.target
        self.train_length = c.train_length
        self.calibration_texts, self.calibration_len, self.seed = c.calibration_texts, c.calibration_len, c.seed
        self.masks: list[BandMask] = []
        self._second_moment: dict[str, dict[int, torch.Tensor]] = {}
        self._calibrated_on: str | None = None

    @classmethod
    def from_spec(cls, arg: str) -> "Dope":
        return cls(**parse_spec(cls.Config, arg, f"intervention '{cls.name}'", grammar=cls.spec_help))

    def params(self) -> dict[str, Any]:
        out = {"heads": self.heads, "variant": self.variant, "metric": self.metric, "order": self.order,
               "indicator": self.indicator, "target": self.target,
               "calibration": f"{self.calibration_texts} built-in texts x {self.calibration_len} tokens"}
        if self.variant == "by-parts":
            out.update(parts=self.parts, train_length=self.train_length)
        if self.masks:
            out["masks"] = [_describe(m) for m in self.masks]
        return out

    # ------------------------------------------------------------------ calibration
    def validate(self, model) -> None:
        if model.card.position_encoding != "rope":
            raise PosbenchError(f"dope needs a RoPE model; {model.model_id} uses {model.card.position_encoding} positions")
        if not model.supports("rot_q", edit=True):
            raise PosbenchError(f"dope edits post-RoPE q/k, which the backend cannot edit on {model.card.architecture}")
        if self._calibrated_on != model.model_id:
            self.calibrate(model)

    def calibrate(self, model) -> list[BandMask]:
        """Rotated-q/k Gram sums on the calibration texts, DoPE's head scores, the selection and masks."""
        seqs = natural_sequences(model, natural_texts()[: self.calibration_texts], self.calibration_len)
        outs = [out for _, _, out in run_batches(model, seqs, [gram_capture("rot_q"), gram_capture("rot_k")],
                                                 batch_size=4)]
        grams = {ind: merge_grams(outs, f"gram_rot_{ind}") for ind in ("q", "k")}
        summaries = {layer: acc.finish() for layer, acc in grams[self.indicator].items()}
        ranks = (int(self.metric[11:]),) if self.metric.startswith("trunc_rank_") else ()
        table = head_score_table(summaries, ranks, self.indicator)
        selected = select_heads(table, self.heads, self.metric, self.order)
        inv_freq = {layer: model.rotary_inv_freq(layer) for layer in range(model.n_layers)}
        self.masks = dope_masks(selected, self.variant, model.card, train_length=self.train_length, parts=self.parts,
                                target=self.target, inv_freq=inv_freq)
        self._second_moment = {ind: {layer: torch.diagonal(acc.finish().gram, dim1=-2, dim2=-1) / acc.n_tokens
                                     for layer, acc in g.items()} for ind, g in grams.items()}
        self._calibrated_on = model.model_id
        return self.masks

    # ------------------------------------------------------------------ edits
    def edits(self, model) -> list[Edit]:
        if self._calibrated_on != model.model_id:
            raise PosbenchError("dope was not calibrated on this model: apply it with model.intervene(...)")
        edits: list[Edit] = []
        for m in self.masks:
            if m.mode == "zero":
                edits.extend(RopeBandZero(pairs=list(m.pairs), layers=[m.layer], heads=list(m.heads),
                                          target=m.target).edits(model))
            else:
                edits.extend(self._gaussian_edits(model, m))
        return edits

    def _gaussian_edits(self, model, m: BandMask) -> list[Edit]:
        n_pairs = model.n_pairs
        idx = torch.tensor(list(m.pairs) + [p + n_pairs for p in m.pairs])
        q_heads = list(m.heads)
        kv_heads = sorted({model.card.kv_head_of(h) for h in q_heads})
        out = []
        for site, heads, ind in (("rot_q", q_heads, "q"), ("rot_k", kv_heads, "k")):
            if ind not in m.target:
                continue
            sigma = self._second_moment[ind][m.layer][heads][:, idx].sqrt().float()  # [h, dims]

            def replace(x: torch.Tensor, ctx, heads=heads, sigma=sigma, salt=len(out)) -> torch.Tensor:
                gen = torch.Generator().manual_seed(self.seed + 1000 * m.layer + salt)
                noise = torch.randn(x.shape[0], x.shape[1], len(heads), len(idx), generator=gen) * sigma
                y = x.clone()
                sub = y[:, :, heads]
                sub[..., idx] = noise.to(x.device, x.dtype)
                y[:, :, heads] = sub
                return y

            out.append(Edit(site, replace, layers=(m.layer,)))
        return out


def _describe(m: BandMask) -> str:
    if m.mode == "zero":
        return m.intervention_spec()
    return f"layers={m.layer};heads={','.join(map(str, m.heads))};all pairs gaussian;target={m.target}"


__all__ = ["Dope"]
