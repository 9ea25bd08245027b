"""Attention sinks and massive activations.

* Sink mass (Gu et al., "When Attention Sink Emerges in Language Models", ICLR 2025): for layer l,
  head h and key position k, alpha = sum_{t >= k} A[t, k] / (T - k), the attention key k receives,
  averaged over the queries that can see it. Sink rate = share of (sequence, layer, head) with
  alpha_0 > epsilon (default 0.3), reported overall and per layer.
* First token or position 0? The same texts with the first token removed, swapped for a random
  token, or moved behind three random tokens: does the mass follow the token or the position?
* Massive activations (Sun et al., "Massive Activations in Large Language Models", 2024): per layer,
  residual-stream |x| at each position against the layer's median |x|, with the positions and
  dimensions that carry the largest values (|x| > 100 and > 1000x the median flag "massive").

Everything is reduced inside the hooks: per batch and layer only [batch, heads, keys] sink mass
and a few residual statistics are kept, never T x T patterns.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from posbench import data as pdata
from posbench.batching import run_batches
from posbench.errors import BadOptionError, EmptyDataError, PosbenchWarning
from posbench.heads import sink_trait
from posbench.options import option
from posbench.progress import Progress
from posbench.protocols import Probe
from posbench.sites import AttentionCapture, AttentionStatistic, Capture, Context

INPUT_KINDS = ("natural", "random", "repeated")


@dataclass
class SinkConfig:
    seq_len: int = option(64, min=2, counts="tokens", help="tokens per sequence (Gu et al.: the first 64)")
    n_sequences: int = option(16, min=1, counts="sequences", help="sequences per input kind (Gu et al. use 100)")
    k_first: int = option(4, min=1, help="report sink mass for key positions 0 .. k_first-1")
    epsilon: float = option(0.3, min=0.0, max=1.0, help="sink threshold on alpha")
    inputs: tuple[str, ...] = option(INPUT_KINDS, choices=INPUT_KINDS, nonempty=True, help="input kinds")
    first_token_test: bool = option(True, help="run the first-token-or-position-0 variants")
    n_moved: int = option(3, min=1, help="random tokens put before the first token in the 'moved' variant")
    massive_abs: float = option(100.0, min=0.0, help="Sun et al.: |x| > 100 ...")
    massive_ratio: float = option(1000.0, min=1.0, help="... and about 1000x the median |x|")
    top_activations: int = option(5, min=1, help="largest |x| entries kept per (sequence, layer)")
    batch_size: int = option(8, min=1, counts="batch")
    padding_side: str = option("right", choices=("left", "right"))
    seed: int = option(0, min=0)


def _key_columns(batch, key_index: torch.Tensor, width: int) -> torch.Tensor:
    return (batch.offsets[:, None] + key_index).clamp(max=width - 1)


def _key_mass_sum(rows: torch.Tensor, start: int, attention_mask: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Sum over the real queries among ``rows`` [B, H, n, T] (query rows start..start+n) of the
    attention on the key columns ``cols`` [B, K]: [B, H, K]."""
    batch, heads, n, _ = rows.shape
    cols = cols.to(rows.device)
    gathered = rows.gather(3, cols[:, None, None, :].expand(batch, heads, n, cols.shape[1]))
    query_mask = attention_mask[:, start : start + n].to(rows.dtype)[:, None, :, None]
    return (gathered * query_mask).sum(dim=2)


def _per_visible_query(mass: torch.Tensor, lengths: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
    visible = (lengths.to(mass.device)[:, None] - key_index.to(mass.device)).clamp(min=1).to(mass.dtype)
    return mass / visible[:, None, :]


def key_mass(
    pattern: torch.Tensor,
    attention_mask: torch.Tensor,
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    key_index: torch.Tensor,
) -> torch.Tensor:
    """Attention each chosen key receives, averaged over the queries that can see it.

    pattern [B, H, T, T] (query, key); key_index [B, K] holds *real-token* indices (padding
    excluded). Returns [B, H, K]: sum over real queries q >= k of A[q, k], divided by L - k.
    """
    cols = (offsets.to(pattern.device)[:, None] + key_index.to(pattern.device)).clamp(max=pattern.shape[-1] - 1)
    return _per_visible_query(_key_mass_sum(pattern, 0, attention_mask, cols), lengths, key_index)


class KeyMass(AttentionStatistic):
    """Gu et al.'s alpha for the first ``k_first`` keys (and, with ``track``, the key at
    ``row_meta["tracked"]`` of each row): [B, H, K(+1)]. Only the attention on those key columns
    is needed, so it is declared as key weights (one-hot columns) and folded from rows @ W."""

    def __init__(self, k_first: int, track: bool = False):
        self.k_first, self.track = k_first, track

    def _key_index(self, batch) -> torch.Tensor:
        key_index = torch.arange(self.k_first).repeat(batch.size, 1)
        if self.track:
            tracked = torch.tensor([m.get("tracked", 0) for m in batch.row_meta])
            key_index = torch.cat([key_index, tracked[:, None]], dim=1)
        return key_index

    def key_weights(self, ctx: Context) -> torch.Tensor:
        batch = ctx.batch
        cols = _key_columns(batch, self._key_index(batch), batch.width)
        weights = torch.zeros(batch.size, batch.width, cols.shape[1])
        weights[torch.arange(batch.size)[:, None], cols, torch.arange(cols.shape[1])[None, :]] = 1.0
        return weights

    def start(self, ctx: Context):
        return {"key_index": self._key_index(ctx.batch), "mass": 0.0}

    def update(self, state, key_rows, start, ctx):
        """key_rows [B, H, n, K]: the attention of queries start .. start+n-1 on the chosen keys."""
        query_mask = ctx.batch.attention_mask[:, start : start + key_rows.shape[2]].to(key_rows.dtype)
        state["mass"] = state["mass"] + (key_rows * query_mask[:, None, :, None].to(key_rows.device)).sum(dim=2)
        return state

    def finish(self, state, ctx):
        return _per_visible_query(state["mass"], ctx.batch.lengths, state["key_index"]).cpu()


def residual_statistics(resid: torch.Tensor, ctx: Context, top_n: int) -> list[dict[str, Any]]:
    """Per sequence: the median |x| of the residual stream, its top-n entries (value, position,
    dim) and each position's max |x| with its dim (Sun et al.'s massive activations)."""
    x = resid.detach()
    batch = ctx.batch
    rows = []
    for b in range(batch.size):
        absx = x[b, batch.real_columns(b)].float().abs()  # [L_b, D]
        median = absx.median().item()
        vals, idx = absx.flatten().topk(min(top_n, absx.numel()))
        per_pos = absx.max(dim=-1)
        rows.append(
            {
                "seq": b,
                "median": median,
                "top_value": vals.tolist(),
                "top_position": (idx // absx.shape[1]).tolist(),
                "top_dim": (idx % absx.shape[1]).tolist(),
                "pos_max": per_pos.values.tolist(),
                "pos_argdim": per_pos.indices.tolist(),
            }
        )
    return rows


class SinkProbe(Probe):
    name = "sinks"
    work_factor = 8.8  # time estimate: cost per planned token (benchmarks/estimate_factors.py)
    summary = "attention sinks (Gu et al.) and massive activations (Sun et al.)"
    Config = SinkConfig
    default_data_options = ("inputs", "n_sequences")

    def check_config(self) -> None:
        if not 0 < self.config.epsilon < 1:
            raise BadOptionError(f"epsilon must be in (0, 1), got {self.config.epsilon}")

    @classmethod
    def load_data(cls, spec: str):
        """``--data``: input kinds (natural,random,repeated) or a .txt/.jsonl file of texts."""
        from pathlib import Path

        if Path(spec).suffix in (".txt", ".jsonl") or Path(spec).exists():
            return super().load_data(spec)
        kinds = tuple(k.strip() for k in spec.split(",") if k.strip())
        if not kinds:
            raise BadOptionError("--data is empty: give input kinds (natural,random,repeated) or a file")
        return None, {"inputs": kinds}

    # ------------------------------------------------------------------ inputs
    def _inputs(self, model, data) -> tuple[dict[str, list[list[int]]], list[str]]:
        c = self.config
        if data is None:
            texts = pdata.natural_texts()[: c.n_sequences]
            kinds = {}
            for kind in c.inputs:
                if kind == "natural":
                    kinds[kind] = pdata.natural_sequences(model, texts, c.seq_len)
                elif kind == "random":
                    kinds[kind] = pdata.random_token_sequences(model, c.n_sequences, c.seq_len, c.seed)
                else:
                    kinds[kind] = pdata.repeated_token_sequences(model, c.n_sequences, c.seq_len, c.seed)
            return kinds, texts
        if isinstance(data, str):
            data = [data]
        if isinstance(data, dict):
            kinds = {
                k: (pdata.natural_sequences(model, v, c.seq_len, warn=True) if v and isinstance(v[0], str)
                    else [list(s) for s in v])
                for k, v in data.items()
            }
            texts = [t for v in data.values() for t in v if isinstance(t, str)]
            return kinds, texts
        texts = list(data)
        if not texts:
            raise EmptyDataError("sinks: the data is empty: pass at least one text")
        return {"custom": pdata.natural_sequences(model, texts, c.seq_len, warn=True)}, texts

    def _first_token_variants(self, model, texts: list[str]) -> dict[str, tuple[list[list[int]], list[int | None]]]:
        """Variants of the same texts and, per sequence, where the original first token now is."""
        c = self.config
        base = pdata.natural_sequences(model, texts, None)
        gen = torch.Generator().manual_seed(c.seed + 1)
        randoms = model.random_tokens(len(base), c.n_moved + 1, gen).tolist()
        # a variant may be longer than its text (first_moved adds n_moved tokens): cut to the context too
        limit = min(c.seq_len, model.card.context_length or c.seq_len)
        cut = lambda s: s[:limit]  # noqa: E731
        variants: dict[str, tuple[list[list[int]], list[int | None]]] = {
            "as_is": ([cut(s) for s in base], [0] * len(base))
        }
        bos = model.tokenizer.bos_token_id
        if model.card.adds_bos:
            variants["bos_removed"] = ([cut(s[1:]) for s in base], [None] * len(base))
        elif bos is not None:
            variants["bos_added"] = ([cut([bos] + s) for s in base], [1] * len(base))
        variants["first_swapped"] = ([cut([r[0]] + s[1:]) for s, r in zip(base, randoms)], [None] * len(base))
        variants["first_moved"] = (
            [cut(r[1:] + s) for s, r in zip(base, randoms)],
            [c.n_moved] * len(base),
        )
        return variants

    # ------------------------------------------------------------------ capture + reduce
    def _run_sequences(self, model, seqs, progress, tracked=None):
        """Sink mass [N, L, H, K(+1)] and residual statistics for a list of token sequences."""
        c = self.config
        k_first = min(c.k_first, min(len(s) for s in seqs))
        row_meta = None if tracked is None else [{"tracked": t if t is not None else 0} for t in tracked]
        top_n = c.top_activations
        captures = [
            AttentionCapture("mass", KeyMass(k_first, track=tracked is not None)),
            Capture("resid", "resid_post", lambda x, ctx: residual_statistics(x, ctx, top_n)),
        ]
        masses, resid_rows = [], []
        for start, _, out in run_batches(model, seqs, captures, batch_size=c.batch_size, padding_side=c.padding_side,
                                         row_meta=row_meta, progress=progress):
            masses.append(torch.stack([out["mass"][l] for l in range(model.n_layers)], dim=1))
            for layer, rows in out["resid"].items():
                for row in rows:
                    row["seq"] += start
                    row["layer"] = layer
                    resid_rows.append(row)
        return torch.cat(masses).numpy(), resid_rows, k_first

    # ------------------------------------------------------------------ measure
    def measure(self, model, data, progress=False):
        c = self.config
        kinds, texts = self._inputs(model, data)
        for kind, seqs in kinds.items():
            model.check_lengths(seqs)  # fail before any compute
            short = [i for i, s in enumerate(seqs) if len(s) < 2]
            if short:
                warnings.warn(PosbenchWarning(
                    f"sinks: {len(short)} {kind} sequence(s) (first: #{short[0]}) have a single token, whose only "
                    "query can attend only to itself: their sink mass is 1 by construction; use longer texts"
                ), stacklevel=2)
        variants = self._first_token_variants(model, texts) if (c.first_token_test and texts) else {}
        total = sum(map(len, kinds.values())) + sum(len(v[0]) for v in variants.values())
        bar = Progress(total, f"sinks on {model.model_id}", enabled=progress)
        head_rows, massive_rows, position_rows = [], [], []
        data_record: dict[str, Any] = {
            "kinds": {k: len(v) for k, v in kinds.items()},
            "seq_len": c.seq_len,
            "bos_prepended": model.card.adds_bos,
            "bos_token": model.card.bos_token,
            "tokens": {k: v for k, v in kinds.items()},
        }
        kind_mass: dict[str, np.ndarray] = {}
        for kind, seqs in kinds.items():
            mass, resid, k_first = self._run_sequences(model, seqs, bar)
            kind_mass[kind] = mass
            n_seq = mass.shape[0]
            for layer in range(model.n_layers):
                for head in range(model.n_heads):
                    for k in range(k_first):
                        a = mass[:, layer, head, k]
                        head_rows.append(
                            (kind, layer, head, k, float(a.mean()), float(a.std()),
                             float((a > c.epsilon).mean()), n_seq)
                        )
            massive_rows.extend(self._massive_rows(kind, resid))
            position_rows.extend(self._position_rows(kind, resid))

        head_mass = pd.DataFrame(
            head_rows,
            columns=["input", "layer", "head", "key_pos", "mean_mass", "std_mass", "sink_rate", "n_seqs"],
        )
        layer_sink = (
            head_mass.groupby(["input", "layer", "key_pos"], as_index=False)
            .agg(sink_rate=("sink_rate", "mean"), mean_mass=("mean_mass", "mean"))
        )
        tables = {
            "head_mass": head_mass,
            "layer_sink_rate": layer_sink,
            "massive_top": pd.DataFrame(
                massive_rows,
                columns=["input", "seq", "layer", "rank", "position", "dim", "value", "median", "ratio", "massive"],
            ),
            "resid_position": pd.DataFrame(
                position_rows,
                columns=["input", "layer", "position", "max_abs", "ratio_to_median", "top_dim"],
            ),
        }
        heads = self._heads_table(model, kind_mass)
        if heads is not None:
            tables["heads"] = heads
        if variants:
            tables["first_token"], data_record["first_token"] = self._first_token_table(model, variants, bar)
        bar.close()
        summary = self._summary(model, tables)
        return tables, summary, data_record

    def _heads_table(self, model, kind_mass) -> pd.DataFrame | None:
        """Per head: alpha_0 on each input kind and the taxonomy's ``sink`` trait
        (``posbench.heads.sink_trait``: alpha_0 > epsilon on natural text and on random tokens)."""
        alpha = {kind: mass[:, :, :, 0].mean(0) for kind, mass in kind_mass.items()}  # [L, H]
        natural = alpha.get("natural", alpha.get("custom"))
        if natural is None:
            return None
        L, H = natural.shape
        table = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                              "kv_head": [model.card.kv_head_of(h) for h in range(H)] * L})
        for kind, a in alpha.items():
            table[f"alpha0_{kind}"] = a.reshape(-1)
        random = alpha["random"].reshape(-1) if "random" in alpha else None
        table["sink"] = sink_trait(natural.reshape(-1), random, self.config.epsilon)
        return table

    def _massive_rows(self, kind, resid):
        c = self.config
        rows = []
        for r in resid:
            for rank, (v, p, d) in enumerate(zip(r["top_value"], r["top_position"], r["top_dim"])):
                ratio = v / max(r["median"], 1e-12)
                rows.append(
                    (kind, r["seq"], r["layer"], rank, p, d, v, r["median"], ratio,
                     bool(v > c.massive_abs and ratio > c.massive_ratio))
                )
        return rows

    @staticmethod
    def _position_rows(kind, resid):
        acc: dict[tuple[int, int], list] = {}
        for r in resid:
            med = max(r["median"], 1e-12)
            for pos, (v, d) in enumerate(zip(r["pos_max"], r["pos_argdim"])):
                acc.setdefault((r["layer"], pos), []).append((v, v / med, d))
        rows = []
        for (layer, pos), vals in sorted(acc.items()):
            arr = np.array([(v, q) for v, q, _ in vals])
            dims = [d for _, _, d in vals]
            rows.append((kind, layer, pos, float(arr[:, 0].mean()), float(arr[:, 1].mean()),
                         int(max(set(dims), key=dims.count))))
        return rows

    def _first_token_table(self, model, variants, bar):
        c = self.config
        rows, record = [], {}
        for variant, (seqs, tracked) in variants.items():
            mass, _, k_first = self._run_sequences(model, seqs, bar, tracked)
            has_tracked = np.array([t is not None for t in tracked])
            record[variant] = {"n": len(seqs), "tracked_position": next((t for t in tracked if t is not None), None)}
            for layer in range(model.n_layers):
                for head in range(model.n_heads):
                    pos0 = mass[:, layer, head, 0]
                    trk = float(mass[has_tracked, layer, head, -1].mean()) if has_tracked.any() else float("nan")
                    rows.append(
                        (variant, layer, head, float(pos0.mean()), trk,
                         record[variant]["tracked_position"], float((pos0 > c.epsilon).mean()))
                    )
        table = pd.DataFrame(
            rows,
            columns=["variant", "layer", "head", "mass_pos0", "mass_first_token", "first_token_pos", "sink_rate_pos0"],
        )
        return table, record

    def _summary(self, model, tables) -> dict[str, Any]:
        c = self.config
        hm = tables["head_mass"]
        out: dict[str, Any] = {
            "bos_prepended": model.card.adds_bos,
            "epsilon": c.epsilon,
        }
        late = hm[(hm.key_pos == 0) & (hm.layer >= min(2, model.n_layers - 1))]
        for kind in hm["input"].unique():
            k0 = hm[(hm.key_pos == 0) & (hm["input"] == kind)]
            lk = late[late["input"] == kind]
            out[f"sink_rate_{kind}_pct"] = round(100 * float(k0.sink_rate.mean()), 2)
            out[f"mean_first_mass_{kind}_layers2+"] = round(float(lk.mean_mass.mean()), 4)
            out[f"share_heads_majority_first_{kind}_layers2+"] = round(float((lk.mean_mass > 0.5).mean()), 4)
        if "heads" in tables:
            out["sink_heads"] = int(tables["heads"].sink.sum())
        mt = tables["massive_top"]
        if len(mt):
            best = mt.loc[mt.ratio.idxmax()]
            out["max_activation_ratio"] = round(float(best.ratio), 1)
            out["max_activation"] = f"{best.value:.1f} at layer {int(best.layer)}, position {int(best.position)}, dim {int(best.dim)} ({best['input']})"
            massive = mt[mt.massive]
            out["massive_entries"] = int(len(massive))
            if len(massive):
                out["massive_positions"] = ",".join(map(str, sorted(massive.position.value_counts().index[:5].tolist())))
                out["massive_dims"] = ",".join(map(str, massive.dim.value_counts().index[:5].tolist()))
        if "first_token" in tables:
            ft = tables["first_token"]
            ftl = ft[ft.layer >= min(2, model.n_layers - 1)]
            means = ftl.groupby("variant")[["mass_pos0", "mass_first_token"]].mean()
            for variant, row in means.iterrows():
                out[f"first_token:{variant}:mass_pos0"] = round(float(row.mass_pos0), 4)
            if "first_moved" in means.index:
                moved = means.loc["first_moved"]
                out["first_token:first_moved:mass_on_moved_token"] = round(float(moved.mass_first_token), 4)
                p0, tok = float(moved.mass_pos0), float(moved.mass_first_token)
                out["sink_follows"] = (
                    "no sink" if max(p0, tok) < c.epsilon
                    else "token" if tok > 2 * p0 else "position 0" if p0 > 2 * tok else "both"
                )
        return out
