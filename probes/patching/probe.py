"""Activation patching as a storable probe: built-in clean/corrupted pairs (or ``--data``), one
sweep per site, tidy tables that the store, the report page and the dashboard show.

The experiment itself lives in ``posbench.experiments.patching`` (``patch_sweep``); this probe
picks the pairs, runs the sweeps and records them. Not part of ``posbench report``: a sweep costs
one forward row per pair and patch (layers x heads, or layers x positions), minutes for the
embedded models on a CPU (docs/patching.md gives timings), so it runs when asked
(``posbench run patching`` or ``PatchingProbe().run(model)``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd

from posbench.data.patch_pairs import PatchPairsDataset
from posbench.errors import BadOptionError, EmptyDataError
from posbench.experiments.patching import MODES, PATCH_SITES, patch_grid, prepare_pairs, run_patches
from posbench.options import option
from posbench.protocols import Probe


@dataclass
class PatchingConfig:
    task: str = option("ioi", choices=("ioi", "kv"), help="built-in pairs: ioi (names) or kv (key-value retrieval); --data replaces them")
    n_pairs: int = option(8, min=1, help="pairs patched together (the metric is averaged over them)")
    sites: tuple[str, ...] = option(("resid_pre", "z"), choices=PATCH_SITES, nonempty=True, help="sites to sweep, one sweep each")
    positions: str = option("default", choices=("default", "all", "each"),
                            help="one patch over all positions or one per position (default: each for stream sites, all for head sites)")
    mode: str = option("denoise", choices=MODES, help="denoise: run corrupted, patch in clean; noise: the reverse")
    batch_size: int = option(32, min=1, help="forward rows per pass (patches x pairs)")
    seed: int = option(0, min=0, help="seed of the built-in pairs")


def _rows(data: Any, config: PatchingConfig) -> tuple[list[dict], dict[str, Any]]:
    if data is None:
        dataset = PatchPairsDataset.generate(config.seed)
        return [r for r in dataset.rows if r["task"] == config.task], dataset.record()
    dataset = data if isinstance(data, PatchPairsDataset) else PatchPairsDataset(list(data), source="user rows")
    return list(dataset.rows), dataset.record()


def usable_pairs(model, rows: list[dict], n_pairs: int) -> tuple[list[dict], list[tuple[str, str]]]:
    """The rows that patch on this model: equal clean/corrupted token length, distinct answer
    tokens, and the most common length among them (first ``n_pairs``); and why others were left."""
    ok, dropped = [], []
    for i, row in enumerate(rows):
        try:
            ok.append((prepare_pairs(model, row["clean"], row["corrupted"], row["answer"], row["wrong"]).length, row))
        except BadOptionError as err:
            dropped.append((row.get("id", f"row {i}"), str(err)))
    if not ok:
        reasons = "; ".join(f"{i}: {why}" for i, why in dropped[:3])
        raise EmptyDataError(f"no pair can be patched on {model.model_id}: {reasons}")
    counts = Counter(length for length, _ in ok)
    best = min(counts, key=lambda n: (-counts[n], n))
    for length, row in ok:
        if length != best:
            dropped.append((row.get("id", "?"), f"{length} tokens, the kept pairs have {best}"))
    return [row for length, row in ok if length == best][:n_pairs], dropped


class PatchingProbe(Probe):
    name = "patching"
    summary = "activation / attention patching over clean and corrupted prompt pairs (normalised: 1 = clean, 0 = corrupted)"
    Config = PatchingConfig
    reported = False  # minutes per model on a CPU; run it on request
    tags = ("representation",)
    data_help = 'a .jsonl file of {"clean", "corrupted", "answer", "wrong"} prompt pairs of equal token length'

    @classmethod
    def load_data(cls, spec: str):
        return PatchPairsDataset.from_jsonl(spec), {}

    def measure(self, model, data, progress=False):
        c = self.config
        rows, record = _rows(data, c)
        kept, dropped = usable_pairs(model, rows, c.n_pairs)
        args = {k: [r[k] for r in kept] for k in ("clean", "corrupted", "answer", "wrong")}
        pairs = prepare_pairs(model, args["clean"], args["corrupted"], args["answer"], args["wrong"])
        positions = None if c.positions == "default" else c.positions
        results = [run_patches(model, pairs, site, patch_grid(model, site, pairs.length, positions=positions),
                               mode=c.mode, batch_size=c.batch_size, progress=progress)
                   for site in c.sites]
        first = results[0]
        table_pairs = pd.DataFrame({
            "id": [r.get("id", f"pair-{i}") for i, r in enumerate(kept)],
            **args,
            "clean_metric": first.pair_values.clean.values,
            "corrupted_metric": first.pair_values.corrupted.values,
        })
        tables = {
            "patching": pd.concat([r.table for r in results], ignore_index=True),
            "pairs": table_pairs,
            "tokens": pd.DataFrame({"position": range(pairs.length), "token": pairs.tokens}),
        }
        summary: dict[str, Any] = {
            "pairs": len(kept), "pairs_dropped": len(dropped), "mode": c.mode,
            "clean_logit_diff": round(first.clean_value, 4), "corrupted_logit_diff": round(first.corrupted_value, 4),
        }
        for r in results:
            top = r.top(1).iloc[0]
            where = f"L{top.layer}" + ("" if pd.isna(top["head"]) else f".H{top['head']}") + (
                "" if pd.isna(top.position) else f"@{top.position}")
            summary[f"top_{r.site}"] = f"{where} ({top.normalised:.3f})"
        data_record = {**record, "kept": table_pairs["id"].tolist(), "dropped": dropped, "tokens": pairs.clean}
        return tables, summary, data_record
