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

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from posbench import data as pdata
from posbench.errors import BadOptionError
from posbench.protocols import Probe, ProbeResult
from posbench.reduce import offset_sums, position_dependence, row_jsd

POSITIONAL_CLASSES = ("self", "previous-token", "fixed-offset", "local-window")


@dataclass
class PositionalHeadsConfig:
    seq_len: int = 128
    n_random: int = 8  # random-token sequences (used in pairs for content invariance)
    n_natural: int = 8
    n_repeated: int = 4  # repeated random sequences for duplicate / induction scores
    repeat_len: int = 32  # length of the random half that is repeated
    max_offset: int = 32  # offsets kept in the offset-profile table
    sink_threshold: float = 0.3  # first-token mass above this: sink head
    offset_threshold: float = 0.5  # P(d*) above this on both inputs, same d*: fixed-offset head
    window: int = 8  # local window width
    window_threshold: float = 0.8  # P(0..window) mass above this: local-window head
    content_threshold: float = 0.6  # content invariance below this: content head
    content_pds_threshold: float = 0.55  # or PDS below this: attention departs from any offset rule
    induction_threshold: float = 0.3
    batch_size: int = 8
    padding_side: str = "right"
    seed: int = 0


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

    def check_config(self) -> None:
        c = self.config
        if c.n_random < 2 or c.n_random % 2:
            raise BadOptionError("n_random must be an even number >= 2 (sequences are compared in pairs)")
        if c.seq_len < 8 or c.max_offset < 1 or c.n_natural < 1 or c.batch_size < 2:
            raise BadOptionError("seq_len >= 8, max_offset >= 1, n_natural >= 1 and batch_size >= 2 are required")

    # ------------------------------------------------------------------ passes
    def _pass(self, model, seqs, per_row, bar, pair_rows=False):
        """Run sequences; call per_row(layer, row_index, block [H, L, L], batch_block) in hooks."""
        c = self.config
        size = c.batch_size - (c.batch_size % 2) if pair_rows else c.batch_size
        for start in range(0, len(seqs), size):
            chunk = seqs[start : start + size]
            batch = model.batch(chunk, c.padding_side)

            def make(layer):
                def hook(pattern, hook):
                    p = pattern.detach().float()
                    blocks = [p[b, :, batch.real_columns(b), batch.real_columns(b)] for b in range(batch.size)]
                    per_row(layer, start, blocks)
                    return pattern

                return hook

            hooks = [(model.hook_name("pattern", layer), make(layer)) for layer in range(model.n_layers)]
            model.forward(batch, hooks, logits=False)
            bar.update(len(chunk))

    def measure(self, model, data, progress=False):
        c = self.config
        L, H = model.n_layers, model.n_heads
        texts = pdata.natural_texts()[: c.n_natural] if data is None else ([data] if isinstance(data, str) else list(data))
        natural = pdata.natural_sequences(model, texts, c.seq_len)
        randoms = pdata.random_token_sequences(model, c.n_random, c.seq_len, c.seed)
        gen = torch.Generator().manual_seed(c.seed + 3)
        halves = model.random_tokens(c.n_repeated, c.repeat_len, gen)
        bos = [model.tokenizer.bos_token_id] if model.card.adds_bos else []
        repeated = [bos + h.tolist() + h.tolist() for h in halves]
        for seqs in (natural, randoms, repeated):
            model.check_lengths(seqs)
        bar = tqdm(total=len(natural) + len(randoms) + len(repeated), desc=f"positional heads on {model.model_id}",
                   unit="seq", disable=not progress)

        width = c.seq_len  # offsets 0 .. seq_len-1 for the full profile
        acc = {
            kind: {"sums": torch.zeros(L, H, width), "counts": torch.zeros(L, width), "first": torch.zeros(L, H), "n": 0}
            for kind in ("random", "natural")
        }
        jsd_sum, jsd_n = torch.zeros(L, H), 0

        def reduce_profile(kind):
            def per_row(layer, start, blocks):
                nonlocal jsd_sum, jsd_n
                a = acc[kind]
                for blk in blocks:
                    sums, counts = offset_sums(blk)
                    n = sums.shape[1]
                    a["sums"][layer, :, :n] += sums
                    a["counts"][layer, :n] += counts
                    a["first"][layer] += blk[:, 1:, 0].mean(-1).cpu()  # queries after the first token
                    if layer == 0:
                        a["n"] += 1
                if kind == "random":
                    for i in range(0, len(blocks) - 1, 2):
                        a_blk, b_blk = blocks[i], blocks[i + 1]
                        if a_blk.shape == b_blk.shape:
                            jsd_sum[layer] += row_jsd(a_blk[:, 1:], b_blk[:, 1:]).mean(-1).cpu()
                            if layer == 0:
                                jsd_n += 1

            return per_row

        self._pass(model, randoms, reduce_profile("random"), bar, pair_rows=True)
        profile_random = acc["random"]["sums"] / acc["random"]["counts"].clamp(min=1).unsqueeze(1)

        pds_sum, pds_n = torch.zeros(L, H), torch.zeros(L, H)
        natural_reduce = reduce_profile("natural")

        def natural_row(layer, start, blocks):
            natural_reduce(layer, start, blocks)
            for blk in blocks:
                pds = position_dependence(blk, profile_random[layer])
                ok = ~torch.isnan(pds)
                pds_sum[layer][ok] += pds[ok]
                pds_n[layer][ok] += 1

        self._pass(model, natural, natural_row, bar)
        profile_natural = acc["natural"]["sums"] / acc["natural"]["counts"].clamp(min=1).unsqueeze(1)

        dup_sum, ind_sum, rep_n = torch.zeros(L, H), torch.zeros(L, H), 0
        n, b0 = c.repeat_len, len(bos)

        def repeated_row(layer, start, blocks):
            nonlocal rep_n
            for blk in blocks:
                queries = torch.arange(b0 + n + 1, b0 + 2 * n)  # second copy, from its 2nd token
                dup_sum[layer] += blk[:, queries, queries - n].mean(-1).cpu()
                ind_sum[layer] += blk[:, queries, queries - n + 1].mean(-1).cpu()
                if layer == 0:
                    rep_n += 1

        self._pass(model, repeated, repeated_row, bar)
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
                    "first_token_mass": float(acc["natural"]["first"][layer, head] / max(acc["natural"]["n"], 1)),
                    "first_token_mass_random": float(acc["random"]["first"][layer, head] / max(acc["random"]["n"], 1)),
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

    @classmethod
    def report_tables(cls, result: ProbeResult):
        heads = result.tables["heads"]
        cols = ["layer", "head", "kv_head", "class", "top_offset_random", "top_score_random", "top_score_natural",
                "content_invariance", "pds", "first_token_mass"]
        positional = heads[heads["class"].isin(POSITIONAL_CLASSES)][cols].round(3)
        induction = heads[heads.induction][["layer", "head", "kv_head", "induction_score", "duplicate_score", "class"]].round(3)
        counts = heads["class"].value_counts().rename_axis("class").reset_index(name="heads")
        return {"head classes": counts, "positional heads": positional, "induction heads": induction}

    # ------------------------------------------------------------------ figures
    @classmethod
    def figures(cls, result: ProbeResult):
        import plotly.express as px

        heads = result.tables["heads"]
        figs = {}
        for col, title, scale in (
            ("pds", "Position-dependence score (1 = attention set by relative offset alone)", "Viridis"),
            ("content_invariance", "Content invariance on random tokens (1 - mean JSD)", "Cividis"),
        ):
            grid = heads.pivot(index="layer", columns="head", values=col)
            figs[col] = px.imshow(grid, origin="lower", aspect="auto", zmin=0, zmax=1, color_continuous_scale=scale,
                                  labels={"x": "head", "y": "layer", "color": col}, title=title).update_xaxes(dtick=1)
        figs["classes"] = px.scatter(
            heads, x="head", y="layer", color="class", symbol="class",
            hover_data=["kv_head", "top_offset_random", "top_score_random", "pds", "content_invariance",
                        "first_token_mass", "induction_score"],
            title="Head classes (first-token heads are set aside before the positional tests)",
        ).update_traces(marker={"size": 12})
        off = result.tables["offset_profile"]
        positional = heads[heads["class"].isin(POSITIONAL_CLASSES)]
        pick = positional if len(positional) else heads.nlargest(6, "top_score_random")
        keys = {(int(r.layer), int(r["head"])) for _, r in pick.head(12).iterrows()}
        sel = off[[(l, h) in keys for l, h in zip(off.layer, off["head"])]].copy()
        sel["head_id"] = [f"L{l}H{h} ({i})" for l, h, i in zip(sel.layer, sel["head"], sel["input"])]
        figs["offset_curves"] = px.line(
            sel, x="offset", y="attention", color="head_id", markers=True,
            title="Offset profiles P(d) of the positional heads (first token removed, rows renormalised)",
        )
        figs["pds_vs_ci"] = px.scatter(
            heads, x="content_invariance", y="pds", color="class",
            hover_data=["layer", "head"], title="Content invariance vs position dependence",
        )
        return figs
