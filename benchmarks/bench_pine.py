"""Cost of PINE against the plain forward pass, at 2, 5 and 20 segments.

One process loads the model once; for each segment count N it builds a segmented prompt (a
short instruction, N passages of ``--segment-tokens`` tokens cut from the project's natural
texts, a question) and times, alternately, the plain forward (TransformerBridge, eager attention,
stopped before the unembedding) and the same forward under PINE. Reported: tokens, the median
of ``--repeats`` timings of each (wall time, and the process's CPU time, which a machine shared
with other jobs disturbs less), and their ratios. Wang et al. report about 2x at 2 documents and
about 8x at 20 (their for-loop implementation, 8 x A100).

Beside the cost, the order invariance at that length: the largest difference of the last
token's logits (fp32) between the prompt and the same prompt with its segments in a seeded
random order, under PINE and, for scale, without it.

    python benchmarks/bench_pine.py --model smollm2-135m-instruct --segments 2 5 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def passages(model, n: int, tokens: int) -> list[str]:
    from posbench.data.texts import natural_texts

    ids = [t for text in natural_texts() for t in model.tokenizer(" " + text, add_special_tokens=False)["input_ids"]]
    if n * tokens > len(ids):
        raise SystemExit(f"the natural texts hold {len(ids)} tokens; ask for fewer segments or shorter ones")
    return [model.tokenizer.decode(ids[i * tokens : (i + 1) * tokens]) for i in range(n)]


def timed(model, batch, interventions) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one forward pass."""
    from posbench.sites import Capture

    capture = [Capture("h", "final_norm", lambda x, ctx: x[:, -1])]
    with model.intervene(*interventions):
        wall, cpu = time.perf_counter(), time.process_time()
        model.run(batch, capture)
        return time.perf_counter() - wall, time.process_time() - cpu


def last_logits(model, batch, interventions) -> torch.Tensor:
    """The last token's logits of every row (only that token is unembedded)."""
    from posbench.sites import Capture

    with model.intervene(*interventions):
        hidden = model.run(batch, [Capture("h", "final_norm", lambda x, ctx: x[:, -1])]).captured["h"]
    return model.backend.unembed(hidden).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--segments", type=int, nargs="+", default=[2, 5, 20])
    parser.add_argument("--segment-tokens", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import posbench
    from posbench.data.segments import SegmentedPrompt
    from posbench.interventions.pine import Pine

    torch.manual_seed(0)
    model = posbench.load_model(args.model)
    rows = []
    for n in args.segments:
        prompt = SegmentedPrompt(
            "Read the passages and answer the question.\n\n",
            tuple(p + "\n\n" for p in passages(model, n, args.segment_tokens)),
            "Question: what is the second passage about?\nAnswer:",
        )
        batch = model.segment_batch([prompt] * args.batch_size)
        timed(model, batch, []), timed(model, batch, [Pine()])  # warm-up
        plain, pine = [], []
        for _ in range(args.repeats):  # alternate, so that load on a shared machine hits both alike
            plain.append(timed(model, batch, []))
            pine.append(timed(model, batch, [Pine()]))
        row = {"segments": n, "tokens": int(batch.lengths.max()), "batch": args.batch_size}
        for what, i in (("wall", 0), ("cpu", 1)):
            row[f"plain_{what}_s"] = round(statistics.median(t[i] for t in plain), 3)
            row[f"pine_{what}_s"] = round(statistics.median(t[i] for t in pine), 3)
            row[f"ratio_{what}"] = round(row[f"pine_{what}_s"] / row[f"plain_{what}_s"], 2)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
        if n > 1 and order == list(range(n)):
            order = order[1:] + order[:1]
        both = model.segment_batch([prompt, prompt.permuted(order)])
        for label, ivs in (("pine", [Pine()]), ("plain", [])):
            logits = last_logits(model, both, ivs)
            row[f"{label}_order_diff"] = float(f"{(logits[0] - logits[1]).abs().max():.3g}")
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| segments | tokens | plain forward, CPU s (wall s) | PINE, CPU s (wall s) | ratio CPU (wall) "
          "| max logit change on reordering: PINE / plain |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['segments']} | {r['tokens']} | {r['plain_cpu_s']:.2f} ({r['plain_wall_s']:.2f}) | "
              f"{r['pine_cpu_s']:.2f} ({r['pine_wall_s']:.2f}) | {r['ratio_cpu']:.2f}x ({r['ratio_wall']:.2f}x) "
              f"| {r['pine_order_diff']:.2g} / {r['plain_order_diff']:.2g} |")
    print(f"\n{args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
