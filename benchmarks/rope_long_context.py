"""The p-RoPE band test where the low band actually turns: 2k-8k tokens instead of 128.

At 128 tokens the lowest quarter of SmolLM2's frequencies turns by at most 0.02 rad and Gemma's
sliding layers' by 0.13 rad, so "making it position-free costs nothing" is nearly automatic.
Barbero et al.'s p-RoPE argument is about long contexts. This script measures, per model and
length (one sequence, batch 1, eager attention):

* next-token loss over all positions and over the second half (where long-range attention
  matters), at baseline and with the lowest / highest ``fraction`` of every layer's frequencies
  made position-free (``rope-position-free``);
* the mean P(d*) of the offset heads (self / previous-token / fixed-offset; the shared taxonomy
  from a default 128-token positional-heads run) on the long sequence;
* the band's largest turn across the **evaluated** span, per layer type (sliding layers see at
  most their window).

Text: the 48 built-in paragraphs concatenated (~6.8k tokens), continued if needed with the unique
documents of the built-in MDQA set (template-generated encyclopedic prose). Writes
``rope_long_context.json`` and ``rope_long_context.md`` into ``--out``.

    python benchmarks/rope_long_context.py                       # SmolLM2 2k, 4k; Gemma 4k
    python benchmarks/rope_long_context.py --run smollm2-135m-instruct:8192 --run gemma-3-270m:8192

CPU reality (2 cores): an 8k eager forward of SmolLM2 takes ~3 min and ~7 GB; each length runs
three forwards. 32k on Gemma's global layers needs the chunked attention path.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import posbench
from posbench.data import natural_texts
from posbench.data.mdqa import MDQADataset
from posbench.heads import OFFSET_LABELS
from posbench.probes.positional_heads import PositionalHeadsProbe
from posbench.probes.rope_usage import band_effects, pair_table

DEFAULT_RUNS = ("smollm2-135m-instruct:2048,4096", "gemma-3-270m:4096")


def long_text() -> str:
    """The built-in paragraphs, then the unique MDQA documents, as one text."""
    parts = list(natural_texts())
    seen = set()
    for row in MDQADataset.builtin().rows:
        for doc in row["documents"]:
            if doc["title"] not in seen:
                seen.add(doc["title"])
                parts.append(f"{doc['title']}. {doc['text']}")
    return "\n\n".join(parts)


def offset_heads(model) -> list[tuple[int, int, int]]:
    heads = PositionalHeadsProbe().run(model).tables["heads"]
    return [(int(r.layer), int(r.head), int(r.offset)) for r in heads.itertuples() if r.primary in OFFSET_LABELS]


def measure(model, length: int, heads, tokens, fraction: float) -> list[dict]:
    seq = tokens[:length]
    if len(seq) < length:
        raise SystemExit(f"the long text has only {len(seq)} tokens for {model.model_id}; asked for {length}")
    pairs = pair_table(model, length)
    t0 = time.perf_counter()
    effects, turns = band_effects(model, [seq], heads, pairs, [fraction], batch_size=1)
    seconds = time.perf_counter() - t0
    rows = []
    for effect in effects.to_dict("records"):
        row = {"model": model.model_id, "tokens": length, "offset_heads": len(heads), **effect,
               "seconds_all_conditions": round(seconds, 1)}
        row.pop("intervention")
        for turn in turns[turns.condition == effect["condition"]].to_dict("records"):
            kind = turn["layer_type"].replace("_attention", "")
            row[f"turn_{kind}"] = turn["max_turn_over_span"]
            row[f"span_{kind}"] = turn["span"]
            row[f"position_free_{kind}"] = turn["position_free_in_span"]
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    kinds = sorted({k[5:] for r in rows for k in r if k.startswith("turn_")})
    head = (["model", "tokens", "condition"] + [f"max turn {k} (rad, span)" for k in kinds]
            + ["loss", "Δ loss", "Δ loss 2nd half", "offset-head P(d*)", "Δ P(d*)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        turns = [f"{r[f'turn_{k}']:.3g} ({r[f'span_{k}']})" if f"turn_{k}" in r else "–" for k in kinds]
        cells = [r["model"], str(r["tokens"]), r["condition"], *turns, f"{r['loss']:.4f}", f"{r['delta_loss']:+.4f}",
                 f"{r['delta_loss_second_half']:+.4f}", f"{r['positional_head_score']:.3f}",
                 f"{r['delta_positional_score']:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", help="MODEL:LEN[,LEN...] (repeatable); default: " + " ".join(DEFAULT_RUNS))
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text, rows = long_text(), []
    for spec in args.run or DEFAULT_RUNS:
        name, _, lengths = spec.partition(":")
        model = posbench.load_model(name)
        heads = offset_heads(model)
        tokens = model.tokenize([text])[0]
        for length in (int(x) for x in lengths.split(",")):
            print(f"{name} at {length} tokens ...", flush=True)
            rows.extend(measure(model, length, heads, tokens, args.fraction))
            rows[-1]["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            (out / "rope_long_context.json").write_text(json.dumps(rows, indent=1, default=str))
            (out / "rope_long_context.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
