"""Positional heads: which heads read position rather than content.

Per layer x query head (GQA-aware: each query head is reported with its key/value head), the
statistics of ``posbench.head_statistics``:

* offset profile P_h(d): mean attention by relative offset d = query - key, with the first-token
  column removed and rows renormalised (sinks would otherwise dominate every head), measured on
  random-token sequences (content-free) and on natural text;
* content invariance CI_h = 1 - mean_i JSD(A^x[i,:], A^x'[i,:]) over pairs of different random
  sequences of equal length: 1 means the head attends the same way whatever the tokens;
* position-dependence score PDS_h (ours; see docs/positional-heads.md): 1 - mean_i TV(Ã_i, P̂_i),
  the total-variation distance between the head's real rows on *natural* text and the rows its
  *random-token* offset profile alone predicts;
* alpha_0, the first-key mass (Gu et al.; query 0 included, as in the sinks probe), on both inputs;
* duplicate-token and induction scores on repeated random sequences (Olsson et al. 2022).

Heads are then described by the shared taxonomy (``posbench.heads``): non-exclusive traits
(sink, self, previous-token, fixed-offset, local-window, induction, duplicate, content, diffuse)
and one primary label by a documented precedence, so a sink that is also an induction head shows
as both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from posbench import data as pdata
from posbench.errors import BadOptionError
from posbench.head_statistics import HeadInputs, measure_head_statistics
from posbench.heads import POSITIONAL_LABELS, HeadThresholds, head_list, head_traits, thresholds_of, trait_counts
from posbench.options import option
from posbench.progress import Progress
from posbench.protocols import Probe


@dataclass
class PositionalHeadsConfig(HeadThresholds):
    seq_len: int = option(128, min=8, counts="tokens", help="tokens per sequence")
    n_random: int = option(8, min=2, counts="sequences", help="random-token sequences (compared in pairs for content invariance)")
    n_natural: int = option(8, min=1, counts="sequences", help="natural-text sequences")
    n_repeated: int = option(4, min=1, counts="sequences", help="repeated random sequences for duplicate / induction scores")
    repeat_len: int = option(32, min=2, max=65_536, help="length of the random half that is repeated")
    max_offset: int = option(32, min=1, help="offsets kept in the offset-profile table")
    batch_size: int = option(8, min=2, counts="batch")
    padding_side: str = option("right", choices=("left", "right"))
    seed: int = option(0, min=0)


class PositionalHeadsProbe(Probe):
    name = "positional-heads"
    work_factor = 1.2  # time estimate: cost per planned token (benchmarks/estimate_factors.py)
    summary = "offset profiles, content invariance, position dependence, head traits and primary labels"
    Config = PositionalHeadsConfig
    default_data_options = ("n_natural",)

    def check_config(self) -> None:
        if self.config.n_random % 2:
            raise BadOptionError("n_random must be an even number >= 2 (sequences are compared in pairs)")

    def measure(self, model, data, progress=False):
        c = self.config
        texts = pdata.natural_texts()[: c.n_natural] if data is None else ([data] if isinstance(data, str) else list(data))
        inputs = HeadInputs.build(model, texts, c.seq_len, c.n_random, c.n_repeated, c.repeat_len, c.seed,
                                  warn=data is not None)
        bar = Progress(len(inputs), f"positional heads on {model.model_id}", enabled=progress)
        stats = measure_head_statistics(model, inputs, batch_size=c.batch_size, padding_side=c.padding_side,
                                        progress=bar, window=c.window)
        bar.close()
        heads = head_traits(stats.table, thresholds_of(c))
        width = stats.profile_random.shape[-1]
        offset_rows = [
            (layer, head, kind, d, float(prof[layer, head, d]))
            for layer in range(model.n_layers) for head in range(model.n_heads)
            for kind, prof in (("random", stats.profile_random), ("natural", stats.profile_natural))
            for d in range(min(c.max_offset, width - 1) + 1)
        ]
        tables = {
            "heads": heads,
            "offset_profile": pd.DataFrame(offset_rows, columns=["layer", "head", "input", "offset", "attention"]),
        }
        summary: dict[str, Any] = trait_counts(heads)
        summary["positional_heads"] = head_list(heads, heads.primary.isin(POSITIONAL_LABELS))
        summary["induction_heads"] = head_list(heads, heads.induction)
        summary["sink_and_mechanism_heads"] = int((heads.sink & (heads.primary != "sink")).sum())
        summary["mean_pds"] = round(float(heads.pds.mean()), 4)
        summary["mean_content_invariance"] = round(float(heads.content_invariance.mean()), 4)
        data_record = {**inputs.record(), "seq_len": c.seq_len, "bos_prepended": model.card.adds_bos}
        return tables, summary, data_record
