"""Is PINE's residual order dependence at many long segments caused by near-ties in its ranking?

PINE sorts the segments by importance (a float) for every (layer, head, query). Two orders of
the same segments give hidden states that differ by rounding (sums over keys in another column
order); if two importances are within that rounding of each other, the two orders can rank them
differently and move whole segments. This script tests that directly on one prompt (N passages
of ``--segment-tokens`` tokens, as ``bench_pine.py``) and a seeded random order of it:

* ``order_diff``: the largest change of the last token's logits between the two orders (PINE);
* ``flipped``: per layer, the fraction of (head, query) rows whose segment shifts, matched by
  segment content and query token, differ between the two orders (a rank flip);
* ``forced_diff``: the same logit change when the reordered prompt is run with the *first*
  order's shifts (matched by content) instead of its own: if near-tie flips are the cause, this
  falls to the rounding level of orders that rank alike.

    python benchmarks/pine_near_ties.py --model tiny-llama --segments 20 --segment-tokens 50

PINE now runs every row in a canonical content order (``posbench.interventions.pine.canonical_order``),
so both orders record their shifts in that same order and are compared as they are; the
expected result is no flips and an ``order_diff`` of exactly 0. (Before, the shifts were in each
input's own order and were matched by content; the numbers of that time are in docs/pine.md.)
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_pine import last_logits, passages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--segments", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--segment-tokens", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--layers", type=int, default=None,
                        help="tiny-llama only: rebuild it (seeded random init) with this many layers and a 2048-token "
                             "context, to see near-ties in a deeper stack without an embedded model")
    parser.add_argument("--init-range", type=float, default=0.02, help="with --layers: the init's weight std")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"],
                        help="coarser rounding (bfloat16) makes near-ties, and flips, likelier")
    args = parser.parse_args()

    import posbench
    from posbench.data.segments import SegmentedPrompt
    from posbench.interventions.pine import Pine, PineScores

    class RecordedPine(Pine):
        """PINE that records each layer's shifts, or replaces them by ``forced[layer]``."""

        name = None

        def __init__(self, forced=None):
            self.record, self.forced = {}, forced

        def attention_overrides(self, model):
            outer = self

            class Scores(PineScores):
                def scores(self, q, k, ctx):
                    self.at = ctx.layer
                    return super().scores(q, k, ctx)

                def _shifts(self, raw, layout):
                    own = super()._shifts(raw, layout)
                    outer.record[self.at] = own
                    return own if outer.forced is None else outer.forced[self.at]

            return [Scores(windows=tuple(model.card.sliding_windows), softcap=model.card.attn_logit_softcap)]

    if args.layers:
        from transformers import LlamaForCausalLM

        from posbench.zoo import build_tiny

        hf, tokenizer = build_tiny("tiny-llama")
        hf.config.update({"num_hidden_layers": args.layers, "max_position_embeddings": 2048,
                          "initializer_range": args.init_range})
        torch.manual_seed(0)
        model = posbench.load_model(LlamaForCausalLM(hf.config).to(getattr(torch, args.dtype)).eval(), tokenizer)
    else:
        model = posbench.load_model(args.model, dtype=getattr(torch, args.dtype))
    for n in args.segments:
        for tokens in args.segment_tokens:
            prompt = SegmentedPrompt(
                "Read the passages and answer the question.\n\n",
                tuple(p + "\n\n" for p in passages(model, n, tokens)),
                "Question: what is the second passage about?\nAnswer:",
            )
            order = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
            first, second = model.segment_batch([prompt]), model.segment_batch([prompt.permuted(order)])
            ran = RecordedPine()
            base = last_logits(model, first, [ran])[0]
            mapped = ran.record  # PINE's run order is the canonical one in both orders
            own = RecordedPine()
            reordered = last_logits(model, second, [own])[0]
            forced = last_logits(model, second, [RecordedPine(forced=mapped)])[0]
            queries = slice(first.segments[0].prefix[1], None)  # segment and suffix queries (prefix ones rank unused)
            flipped = {layer: round(float((own.record[layer] != mapped[layer]).any(-1)[..., queries].float().mean()), 5)
                       for layer in sorted(mapped)}
            row = {"model": args.model, "layers": model.n_layers, "dtype": args.dtype, "segments": n, "segment_tokens": tokens, "tokens": int(first.lengths[0]),
                   "order_diff": float(f"{(base - reordered).abs().max():.3g}"),
                   "forced_diff": float(f"{(base - forced).abs().max():.3g}"),
                   "flipped_rows_per_layer": flipped}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
