"""The p-RoPE band test where the low band actually turns: 2k-8k tokens instead of 128.

At 128 tokens the lowest quarter of SmolLM2's frequencies turns by at most 0.02 rad and Gemma's
sliding layers' by 0.13 rad, so "making it position-free costs nothing" is nearly automatic.
Barbero et al.'s p-RoPE argument is about long contexts. This script measures, per model and
length (one sequence, batch 1, the fast SDPA path: attention rows rebuilt 256 at a time, and only
in the layers that hold an offset head; sliding-window layers run blocked SDPA, O(T x window)):

* next-token loss over all positions and over the second half (where long-range attention
  matters), at baseline and with the lowest / highest ``fraction`` of every layer's frequencies
  made position-free (``rope-position-free``);
* the mean P(d*) of the offset heads (self / previous-token / fixed-offset; the shared taxonomy
  from a default 128-token positional-heads run) on the long sequence;
* the band's largest turn across the **evaluated** span, per layer type (sliding layers see at
  most their window).

Text: the 48 built-in paragraphs concatenated (~6.9k tokens), continued with the sections of
Python's own language reference as shipped with the interpreter (``pydoc_data.topics``, 79
sections of English technical prose with code, ~100k more tokens, sorted by name). Not the MDQA
documents: they are template sentences that repeat verbatim, which turns next-token prediction
at long range into copying. Each row records how many of the evaluated tokens close a 16-token
n-gram seen earlier in the sequence (``repeated_16gram_tokens``: what copying could predict).

Writes ``rope_long_context.json`` and ``.md`` into ``--out`` (default ``docs/results``, tracked;
``benchmarks/results`` is git-ignored), merging with rows already there (same model, length and
condition are replaced), so each length can run in its own process:

    python benchmarks/rope_long_context.py --run smollm2-135m-instruct:2048
    python benchmarks/rope_long_context.py --run gemma-3-270m:32768

Peak RSS per process is in the rows (Gemma at 32k: see docs/rope-usage.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import pydoc_data.topics

import posbench
from posbench.data import natural_texts
from posbench.heads import OFFSET_LABELS
from posbench.probes.positional_heads import PositionalHeadsProbe
from posbench.probes.rope_usage import band_effects, pair_table

DEFAULT_RUNS = ("smollm2-135m-instruct:2048,4096,8192", "gemma-3-270m:4096,8192,16384,32768")


def long_text() -> str:
    """The built-in paragraphs, then the sections of Python's language reference, as one text."""
    sections = [pydoc_data.topics.topics[name].strip() for name in sorted(pydoc_data.topics.topics)]
    return "\n\n".join([*natural_texts(), *sections])


def repeated_ngram_tokens(seq, n: int = 16) -> int:
    """Positions whose n-gram (the token and the n - 1 before it) already ended at an earlier
    position: the tokens that copying the sequence's own past could predict."""
    seen, repeated = set(), 0
    for t in range(n - 1, len(seq)):
        gram = tuple(seq[t - n + 1 : t + 1])
        repeated += gram in seen
        seen.add(gram)
    return repeated


def offset_heads(model) -> list[tuple[int, int, int]]:
    heads = PositionalHeadsProbe().run(model).tables["heads"]
    return [(int(r.layer), int(r.head), int(r.offset)) for r in heads.itertuples() if r.primary in OFFSET_LABELS]


def measure(model, length: int, heads, tokens, fraction: float, bands=("lowest", "highest"), loss_stride: int = 1) -> list[dict]:
    seq = tokens[:length]
    if len(seq) < length:
        raise SystemExit(f"the long text has only {len(seq)} tokens for {model.model_id}; asked for {length}")
    pairs = pair_table(model, length)
    t0 = time.perf_counter()
    effects, turns = band_effects(model, [seq], heads, pairs, [fraction], batch_size=1, bands=bands, loss_stride=loss_stride)
    seconds = time.perf_counter() - t0
    rows = []
    for effect in effects.to_dict("records"):
        row = {"model": model.model_id, "tokens": length, "repeated_16gram_tokens": repeated_ngram_tokens(seq),
               "offset_heads": len(heads), **effect, "seconds_all_conditions": round(seconds, 1),
               "attn_implementation": model.card.attn_implementation, "loss_stride": loss_stride}
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
    head = (["model", "tokens (in repeated 16-grams)", "condition"] + [f"max turn {k} (rad, span)" for k in kinds]
            + ["loss", "Δ loss", "Δ loss 2nd half", "offset-head P(d*)", "Δ P(d*)", "peak RSS (MiB)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        turns = [f"{r[f'turn_{k}']:.3g} ({r[f'span_{k}']})" if f"turn_{k}" in r else "–" for k in kinds]
        cells = [r["model"], f"{r['tokens']} ({r.get('repeated_16gram_tokens', '?')})", r["condition"], *turns,
                 f"{r['loss']:.4f}", f"{r['delta_loss']:+.4f}", f"{r['delta_loss_second_half']:+.4f}",
                 f"{r['positional_head_score']:.3f}", f"{r['delta_positional_score']:+.3f}", str(r.get("peak_rss_mib", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merged(path: Path, new: list[dict]) -> list[dict]:
    """Rows already at ``path`` with those of the same model, length and condition replaced."""
    key = lambda r: (r["model"], r["tokens"], r["condition"])  # noqa: E731
    old = json.loads(path.read_text()) if path.exists() else []
    fresh = {key(r) for r in new}
    rows = [r for r in old if key(r) not in fresh] + new
    return sorted(rows, key=lambda r: (r["model"], r["tokens"], ["none", "position-free lowest", "position-free highest"]
                                       .index(r["condition"].rsplit(" ", 1)[0]) if r["condition"] != "none" else 0))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", help="MODEL:LEN[,LEN...] (repeatable); default: " + " ".join(DEFAULT_RUNS))
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--bands", default="lowest,highest", help="which ends of the spectrum to make position-free")
    parser.add_argument("--loss-stride", type=int, default=1,
                        help="score the loss on every k-th position only (Gemma-3: the 262k unembedding dominates)")
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = long_text()
    for spec in args.run or DEFAULT_RUNS:
        name, _, lengths = spec.partition(":")
        model = posbench.load_model(name)
        heads = offset_heads(model)
        tokens = model.tokenize([text])[0]
        for length in (int(x) for x in lengths.split(",")):
            print(f"{name} at {length} tokens ...", flush=True)
            rows = measure(model, length, heads, tokens, args.fraction, args.bands.split(","), args.loss_stride)
            for row in rows:
                row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                row["python"] = sys.version.split()[0]  # pydoc_data.topics is this interpreter's reference
            rows = merged(out / "rope_long_context.json", rows)
            (out / "rope_long_context.json").write_text(json.dumps(rows, indent=1, default=str))
            (out / "rope_long_context.md").write_text(markdown(rows))
            print(markdown(rows), flush=True)


if __name__ == "__main__":
    main()
