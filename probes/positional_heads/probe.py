"""Positional heads: which heads read position rather than content.

Per layer x query head (GQA-aware: each query head is reported with its key/value head):

* Offset profile P_h(d): mean attention by relative offset d = query - key, with the first-token
  column removed and rows renormalised (sinks would otherwise dominate every head), measured on
  random-token sequences (content-free) and on natural text.
* Content invariance CI_h = 1 - mean_i JSD(A^x[i,:], A^x'[i,:]) over pairs of different random
  sequences of equal length: 1 means the head attends the same way whatever the tokens.
* Position-dependence score PDS_h (ours; see docs/positional-heads.md): 1 - mean_i TV(Ã_i, P̂_i),
  the total-variation distance between the head's real rows on *natural* text and the rows its
  *random-token* offset profile alone predicts. 1 = attention fully determined by relative
  position; 0 = position explains none of it.
* Classes: first-token/sink, self (offset 0), previous-token, fixed offset k, local window,
  content, diffuse; plus duplicate-token and induction scores on repeated random sequences
  (Olsson et al. 2022; TransformerLens head_detector patterns).

Sinks first: a head whose first-token mass exceeds the sink threshold is a sink head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from posbench import data as pdata
from posbench.batching import run_batches
from posbench.errors import BadOptionError
from posbench.options import option
from posbench.progress import Progress
from posbench.protocols import Probe
from posbench.reduce import offset_counts, offset_sums_rows, position_dependence_rows, row_jsd
from posbench.sites import AttentionCapture, AttentionStatistic, Context

POSITIONAL_CLASSES = ("self", "previous-token", "fixed-offset", "local-window")


@dataclass
class PositionalHeadsConfig:
    seq_len: int = option(128, min=8, counts="tokens", help="tokens per sequence")
    n_random: int = option(8, min=2, counts="sequences", help="random-token sequences (compared in pairs for content invariance)")
    n_natural: int = option(8, min=1, counts="sequences", help="natural-text sequences")
    n_repeated: int = option(4, min=1, counts="sequences", help="repeated random sequences for duplicate / induction scores")
    repeat_len: int = option(32, min=2, max=65_536, help="length of the random half that is repeated")
    max_offset: int = option(32, min=1, help="offsets kept in the offset-profile table")
    sink_threshold: float = option(0.3, min=0.0, max=1.0, help="first-token mass above this: sink head")
    offset_threshold: float = option(0.5, min=0.0, max=1.0, help="P(d*) above this on both inputs, same d*: fixed-offset head")
    window: int = option(8, min=1, help="local window width")
    window_threshold: float = option(0.8, min=0.0, max=1.0, help="P(0..window) mass above this: local-window head")
    content_threshold: float = option(0.6, min=0.0, max=1.0, help="content invariance below this: content head")
    content_pds_threshold: float = option(0.55, min=0.0, max=1.0, help="or PDS below this: attention departs from any offset rule")
    induction_threshold: float = option(0.3, min=0.0, max=1.0)
    batch_size: int = option(8, min=2, counts="batch")
    padding_side: str = option("right", choices=("left", "right"))
    seed: int = option(0, min=0)


# ---------------------------------------------------------------------------- statistics
class OffsetProfile(AttentionStatistic):
    """Per sequence: offset sums [H, width] and counts [width] of the renormalised rows (key 0
    dropped), and the mean first-token mass of the queries after the first token [H]."""

    def __init__(self, width: int):
        self.width = width

    def start(self, ctx: Context):
        return {}

    def update(self, state, rows, start, ctx):
        for b, block, first in ctx.sequence_rows(rows, start):
            st = state.setdefault(b, {"sums": 0.0, "first": 0.0})
            st["sums"] = st["sums"] + offset_sums_rows(block, first, min(self.width, block.shape[-1]))
            st["first"] = st["first"] + block[:, max(0, 1 - first) :, 0].sum(-1)
        return state

    def finish(self, state, ctx):
        out = []
        for b in sorted(state):
            length = int(ctx.batch.lengths[b])
            out.append({"sums": state[b]["sums"].cpu(), "counts": offset_counts(length, min(self.width, length)),
                        "first": (state[b]["first"] / max(length - 1, 1)).cpu()})
        return out


class PairedRowJSD(AttentionStatistic):
    """Mean over queries i >= 1 of JSD(A^x[i,:], A^x'[i,:]) for sequences 2j and 2j+1 of the batch
    (equal lengths and padding), the raw material of content invariance: [pairs] of [H]."""

    def start(self, ctx: Context):
        return {}

    def update(self, state, rows, start, ctx):
        blocks = {b: (block, first) for b, block, first in ctx.sequence_rows(rows, start)}
        batch = ctx.batch
        for i in range(0, batch.size - 1, 2):
            if i not in blocks or i + 1 not in blocks:
                continue
            (a, first), (b, _) = blocks[i], blocks[i + 1]
            if a.shape != b.shape or int(batch.offsets[i]) != int(batch.offsets[i + 1]):
                continue
            skip = max(0, 1 - first)
            state[i] = state.get(i, 0.0) + row_jsd(a[:, skip:], b[:, skip:]).sum(-1)
        return state

    def finish(self, state, ctx):
        return [(state[i] / max(int(ctx.batch.lengths[i]) - 1, 1)).cpu() for i in sorted(state)]


class PositionDependence(AttentionStatistic):
    """Per sequence: PDS [H] against a given offset profile [n_layers, H, width] (NaN if < 3 tokens)."""

    def __init__(self, profile: torch.Tensor):
        self.profile = profile

    def start(self, ctx: Context):
        return {}

    def update(self, state, rows, start, ctx):
        for b, block, first in ctx.sequence_rows(rows, start):
            tv, n = position_dependence_rows(block, first, self.profile[ctx.layer])
            old = state.get(b, (0.0, 0.0))
            state[b] = (old[0] + tv, old[1] + n)
        return state

    def finish(self, state, ctx):
        out = []
        for b in sorted(state):
            tv, n = state[b]
            if int(ctx.batch.lengths[b]) < 3:
                out.append(torch.full((ctx.facts.n_heads,), float("nan")))
            else:
                out.append((1.0 - tv / n.clamp(min=1)).cpu())
        return out


class RepeatScores(AttentionStatistic):
    """Duplicate-token and induction scores on [BOS] + x + x (Olsson et al. 2022): mean attention
    from the second copy's tokens to their first occurrence, and to the token after it."""

    def __init__(self, n: int, bos: int):
        self.n, self.bos = n, bos

    def start(self, ctx: Context):
        return {}

    def update(self, state, rows, start, ctx):
        n, b0 = self.n, self.bos
        for b, block, first in ctx.sequence_rows(rows, start):
            low = max(b0 + n + 1, first)  # the second copy's queries inside this chunk (maybe none)
            queries = torch.arange(low, max(low, min(b0 + 2 * n, first + block.shape[1])))
            dup, ind = state.get(b, (0.0, 0.0))
            local = queries - first
            state[b] = (dup + block[:, local, queries - n].sum(-1), ind + block[:, local, queries - n + 1].sum(-1))
        return state

    def finish(self, state, ctx):
        count = max(self.n - 1, 1)
        return [(state[b][0] / count).cpu() for b in sorted(state)], [(state[b][1] / count).cpu() for b in sorted(state)]


def classify(row: dict[str, float], c: PositionalHeadsConfig) -> str:
    if row["first_token_mass"] > c.sink_threshold:
        return "first-token"
    d_r, d_n = row["top_offset_random"], row["top_offset_natural"]
    if d_r == d_n and min(row["top_score_random"], row["top_score_natural"]) >= c.offset_threshold:
        return "self" if d_r == 0 else "previous-token" if d_r == 1 else "fixed-offset"
    if min(row["window_mass_random"], row["window_mass_natural"]) >= c.window_threshold:
        return "local-window"
    if row["content_invariance"] < c.content_threshold or row["pds"] < c.content_pds_threshold:
        return "content"
    return "diffuse"


class PositionalHeadsProbe(Probe):
    name = "positional-heads"
    summary = "offset profiles, content invariance, position dependence, head classes"
    Config = PositionalHeadsConfig
    default_data_options = ("n_natural",)

    def check_config(self) -> None:
        if self.config.n_random % 2:
            raise BadOptionError("n_random must be an even number >= 2 (sequences are compared in pairs)")

    def _pass(self, model, seqs, captures, progress, batch_size=None):
        c = self.config
        size = batch_size or c.batch_size
        yield from run_batches(model, seqs, captures, batch_size=size, padding_side=c.padding_side, progress=progress)

    def measure(self, model, data, progress=False):
        c = self.config
        L, H = model.n_layers, model.n_heads
        texts = pdata.natural_texts()[: c.n_natural] if data is None else ([data] if isinstance(data, str) else list(data))
        natural = pdata.natural_sequences(model, texts, c.seq_len, warn=data is not None)
        randoms = pdata.random_token_sequences(model, c.n_random, c.seq_len, c.seed)
        gen = torch.Generator().manual_seed(c.seed + 3)
        halves = model.random_tokens(c.n_repeated, c.repeat_len, gen)
        bos = [model.tokenizer.bos_token_id] if model.card.adds_bos else []
        repeated = [bos + h.tolist() + h.tolist() for h in halves]
        for seqs in (natural, randoms, repeated):
            model.check_lengths(seqs)
        bar = Progress(len(natural) + len(randoms) + len(repeated), f"positional heads on {model.model_id}", enabled=progress)

        width = c.seq_len  # offsets 0 .. seq_len-1 for the full profile

        def fold_profiles(outputs):
            sums, counts, first, n = torch.zeros(L, H, width), torch.zeros(L, width), torch.zeros(L, H), 0
            for out in outputs:
                for layer, per_seq in out["profile"].items():
                    for r in per_seq:
                        k = r["sums"].shape[1]
                        sums[layer, :, :k] += r["sums"]
                        counts[layer, :k] += r["counts"]
                        first[layer] += r["first"]
                n += len(out["profile"][0])
            return sums / counts.clamp(min=1).unsqueeze(1), first / max(n, 1)

        # random tokens: offset profiles and paired-row JSD (content invariance)
        random_out = [out for _, _, out in self._pass(
            model, randoms, [AttentionCapture("profile", OffsetProfile(width)), AttentionCapture("jsd", PairedRowJSD())],
            bar, batch_size=c.batch_size - (c.batch_size % 2))]
        profile_random, first_random = fold_profiles(random_out)
        jsd_sum, jsd_n = torch.zeros(L, H), 0
        for out in random_out:
            for layer, pairs in out["jsd"].items():
                for value in pairs:
                    jsd_sum[layer] += value
            jsd_n += len(out["jsd"][0])

        # natural text: offset profiles and PDS against the random-token profile
        natural_out = [out for _, _, out in self._pass(
            model, natural, [AttentionCapture("profile", OffsetProfile(width)),
                             AttentionCapture("pds", PositionDependence(profile_random))], bar)]
        profile_natural, first_natural = fold_profiles(natural_out)
        pds_sum, pds_n = torch.zeros(L, H), torch.zeros(L, H)
        for out in natural_out:
            for layer, per_seq in out["pds"].items():
                for pds in per_seq:
                    ok = ~torch.isnan(pds)
                    pds_sum[layer][ok] += pds[ok]
                    pds_n[layer][ok] += 1

        # repeated random halves: duplicate-token and induction scores
        dup_sum, ind_sum, rep_n = torch.zeros(L, H), torch.zeros(L, H), 0
        for _, _, out in self._pass(model, repeated, [AttentionCapture("repeat", RepeatScores(c.repeat_len, len(bos)))], bar):
            for layer, (dups, inds) in out["repeat"].items():
                for d, i in zip(dups, inds):
                    dup_sum[layer] += d
                    ind_sum[layer] += i
            rep_n += len(out["repeat"][0][0])
        bar.close()

        rows, offset_rows = [], []
        ci = 1.0 - jsd_sum / max(jsd_n, 1)
        for layer in range(L):
            for head in range(H):
                pr, pn = profile_random[layer, head], profile_natural[layer, head]
                row = {
                    "layer": layer,
                    "head": head,
                    "kv_head": model.card.kv_head_of(head),
                    "first_token_mass": float(first_natural[layer, head]),
                    "first_token_mass_random": float(first_random[layer, head]),
                    "prev_token_score": float(pr[1]),
                    "self_score": float(pr[0]),
                    "top_offset_random": int(pr.argmax()),
                    "top_score_random": float(pr.max()),
                    "top_offset_natural": int(pn.argmax()),
                    "top_score_natural": float(pn.max()),
                    "window_mass_random": float(pr[: c.window + 1].sum()),
                    "window_mass_natural": float(pn[: c.window + 1].sum()),
                    "content_invariance": float(ci[layer, head]),
                    "pds": float(pds_sum[layer, head] / pds_n[layer, head].clamp(min=1)),
                    "duplicate_score": float(dup_sum[layer, head] / max(rep_n, 1)),
                    "induction_score": float(ind_sum[layer, head] / max(rep_n, 1)),
                }
                row["class"] = classify(row, c)
                row["induction"] = row["induction_score"] >= c.induction_threshold
                rows.append(row)
                for kind, prof in (("random", pr), ("natural", pn)):
                    for d in range(min(c.max_offset, width - 1) + 1):
                        offset_rows.append((layer, head, kind, d, float(prof[d])))
        heads = pd.DataFrame(rows)
        tables = {
            "heads": heads,
            "offset_profile": pd.DataFrame(offset_rows, columns=["layer", "head", "input", "offset", "attention"]),
        }
        counts = heads["class"].value_counts()
        summary: dict[str, Any] = {f"heads_{k}": int(counts.get(k, 0)) for k in
                                   ("first-token", "self", "previous-token", "fixed-offset", "local-window", "content", "diffuse")}
        summary["induction_heads"] = int(heads.induction.sum())
        positional = heads[heads["class"].isin(POSITIONAL_CLASSES)]
        summary["positional_heads"] = ", ".join(
            f"L{r.layer}H{r['head']}:{r['class']}" + (f"({r.top_offset_random})" if r["class"] == "fixed-offset" else "")
            for _, r in positional.iterrows()
        ) or "none"
        summary["mean_pds"] = round(float(heads.pds.mean()), 4)
        summary["mean_content_invariance"] = round(float(heads.content_invariance.mean()), 4)
        data_record = {"tokens": {"natural": natural, "random": randoms, "repeated": repeated},
                       "sequences": {"natural": len(natural), "random": len(randoms), "repeated": len(repeated)},
                       "seq_len": c.seq_len, "bos_prepended": model.card.adds_bos}
        return tables, summary, data_record
