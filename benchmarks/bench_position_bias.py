"""Cost of a kv position-bias sweep against the plain forward passes it needs.

The sweep: ``--rows`` kv rows of ``--pairs`` key-value pairs, the gold pair in ``--slots``
evenly spaced slots, every value in the context scored by log-likelihood, attention onto the
segments captured (AttnRank off: it needs calibration rows). Measured in one process:

1. ``probe``: ``PositionBiasProbe(task="kv", ...).run(model)`` (bridge, hooks, SDPA attention,
   the attention view, the metric tables), after a small warm-up run (one-time costs), and
   ``probe_without_attention``: the same with ``attention=False``: their difference is what the
   attention view (segment masses, declared as key weights) costs;
2. ``plain_same_rows``: HuggingFace's own forward (SDPA, no hooks, no unembedding) over exactly
   the token rows the probe ran (packed rows: the same lengths), batched the same way;
3. ``plain_one_row_per_choice``: the same over one row per (prompt, choice), what a scorer
   without packing needs (prompt + choice minus its last token); timed on the first prompt's
   rows and scaled by the number of prompts (every prompt of the sweep has the same length).

Reported: wall seconds, rows and tokens of each, and the ratios probe / plain. Use
``--threads 1`` on a shared machine (OpenMP threads spin when cores are oversubscribed).

    python benchmarks/bench_position_bias.py --model smollm2-135m-instruct --pairs 20 --rows 1 --slots 5
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def plain_forward_seconds(hf_model, rows: list[list[int]], batch_size: int, pad: int) -> float:
    import torch

    rows = sorted(rows, key=len, reverse=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, row in enumerate(chunk):
                ids[b, : len(row)] = torch.tensor(row)
                mask[b, : len(row)] = 1
            hf_model.model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--slots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    import posbench
    from posbench.data import KVDataset
    from posbench.probes.position_bias import PositionBiasProbe
    from posbench.probes.position_bias.prompts import chat_frame, resolve_format
    from posbench.probes.position_bias.tasks import retrieval_items
    from posbench.scoring import plan_scoring
    from posbench.zoo import embedded_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    model = posbench.load_model(args.model)
    PositionBiasProbe(task="kv", n_items=1, n_segments=(4,), slots=2, attnrank=False, batch_size=2).run(model)

    def timed_probe(attention: bool):
        probe = PositionBiasProbe(task="kv", n_items=args.rows, n_segments=(args.pairs,), slots=args.slots,
                                  attention=attention, attnrank=False, batch_size=args.batch_size, max_tokens=100_000)
        t0 = time.perf_counter()
        result = probe.run(model)
        return result, time.perf_counter() - t0

    result, probe_s = timed_probe(True)
    _, bare_s = timed_probe(False)

    # the rows the probe ran, rebuilt the same way
    frame = chat_frame(model) if resolve_format(model, "auto") == "chat" else None
    items = retrieval_items("kv", KVDataset.builtin().rows[: args.rows], args.pairs, args.slots, frame)
    prompts, choices = [t.item.prompt for t in items], [list(t.item.choices) for t in items]
    packed = plan_scoring(model, prompts, choices, pack="auto")
    unpacked = plan_scoring(model, prompts, choices, pack=False)

    def rows_of(plan):
        return [model.tokenize_segments(plan.prompts[r.prompt])[0] + r.tokens for r in plan.rows]

    hf = AutoModelForCausalLM.from_pretrained(embedded_checkpoint(args.model), dtype=torch.float32,
                                              attn_implementation="sdpa").eval()
    pad = model.tokenizer.pad_token_id
    same_s = plain_forward_seconds(hf, rows_of(packed), args.batch_size, pad)
    first = [row for row, r in zip(rows_of(unpacked), unpacked.rows) if r.prompt == 0]
    naive_s = plain_forward_seconds(hf, first, args.batch_size, pad) * len(items)
    report = {
        "model": args.model, "pairs": args.pairs, "rows": args.rows, "slots": args.slots,
        "prompts": len(items), "choices_per_prompt": len(choices[0]),
        "probe": {"seconds": round(probe_s, 2), "forward_rows": len(packed.rows), "tokens": packed.n_tokens},
        "probe_without_attention": {"seconds": round(bare_s, 2)},
        "plain_same_rows": {"seconds": round(same_s, 2)},
        "plain_one_row_per_choice": {"seconds": round(naive_s, 2), "forward_rows": len(unpacked.rows),
                                     "tokens": unpacked.n_tokens},
        "ratio_probe_to_plain_same_rows": round(probe_s / same_s, 2),
        "ratio_probe_to_probe_without_attention": round(probe_s / bare_s, 2),
        "ratio_probe_to_plain_one_row_per_choice": round(probe_s / naive_s, 2),
        "kv_accuracy": result.summary.get(f"kv.n{args.pairs}.accuracy"),
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
