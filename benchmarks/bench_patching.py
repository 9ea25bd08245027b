"""Activation patching on an embedded model: what batching patches buys, and what ablating the
heads that patching finds does to the clean behaviour.

1. Seconds per patch of a z sweep over a few layers, at several ``batch_size`` values (rows per
   forward pass; ``batch_size = n_pairs`` is one patch per pass, like TransformerLens's loop),
   and TransformerLens's own ``generic_activation_patch`` on the same bridge for comparison.
2. ``--full``: the whole z sweep (every layer and head) on the built-in IOI pairs, its top heads,
   and the clean logit difference with those heads ablated (zero, mean, resample).

    python benchmarks/bench_patching.py --model smollm2-135m-instruct --layers 0 15 29 --full
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 15, 29])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--top", type=int, default=3, help="heads to ablate after the full sweep")
    parser.add_argument("--full", action="store_true", help="also sweep every layer and head, then ablate the top heads")
    args = parser.parse_args()

    import posbench
    from posbench.data.patch_pairs import PatchPairsDataset
    from posbench.experiments import patch_sweep, prepare_pairs
    from posbench.interventions.head_ablation import HeadAblation
    from transformer_lens import patching as tl_patching

    model = posbench.load_model(args.model)
    rows = [r for r in PatchPairsDataset.generate(0).rows if r["task"] == "ioi"][: args.pairs]
    pair_args = {k: [r[k] for r in rows] for k in ("clean", "corrupted", "answer", "wrong")}
    pairs = prepare_pairs(model, pair_args["clean"], pair_args["corrupted"], pair_args["answer"], pair_args["wrong"])
    report: dict = {"model": args.model, "pairs": len(rows), "tokens": pairs.length, "threads": torch.get_num_threads()}

    n_patches = len(args.layers) * model.n_heads
    timing = {}
    for size in args.batch_sizes:
        t0 = time.perf_counter()
        result = patch_sweep(model, pair_args["clean"], pair_args["corrupted"], "z", answer=pair_args["answer"],
                             wrong=pair_args["wrong"], layers=args.layers, batch_size=size)
        timing[f"posbench batch_size={size}"] = round((time.perf_counter() - t0) / n_patches, 4)
    a = torch.tensor([m["answer"] for m in pairs.row_meta])
    w = torch.tensor([m["wrong"] for m in pairs.row_meta])
    rows_idx = torch.arange(len(a))
    bridge = model.backend.bridge
    t0 = time.perf_counter()
    _, cache = bridge.run_with_cache(torch.tensor(pairs.clean))
    index = pd.DataFrame([(layer, h) for layer in args.layers for h in range(model.n_heads)], columns=["layer", "head"])
    expected = tl_patching.generic_activation_patch(
        bridge, torch.tensor(pairs.corrupted), cache, lambda lg: (lg[rows_idx, -1, a] - lg[rows_idx, -1, w]).mean(),
        tl_patching.layer_head_vector_patch_setter, "z", index_df=index)
    timing["transformer_lens generic_activation_patch"] = round((time.perf_counter() - t0) / n_patches, 4)
    report["seconds_per_patch"] = timing
    report["max_abs_diff_vs_transformer_lens"] = float((torch.tensor(result.table.metric.values) - expected.double()).abs().max())

    if args.full:
        t0 = time.perf_counter()
        full = patch_sweep(model, pair_args["clean"], pair_args["corrupted"], "z", answer=pair_args["answer"],
                           wrong=pair_args["wrong"], batch_size=max(args.batch_sizes))
        report["full_z_sweep_seconds"] = round(time.perf_counter() - t0, 1)
        report["clean_logit_diff"], report["corrupted_logit_diff"] = round(full.clean_value, 3), round(full.corrupted_value, 3)
        top = full.table.sort_values("normalised", ascending=False).head(args.top)
        report["top_heads"] = {f"L{r.layer}.H{r['head']}": round(r.normalised, 3) for _, r in top.iterrows()}
        heads = [(int(r.layer), int(r["head"])) for _, r in top.iterrows()]
        clean = model.batch(pairs.clean, row_meta=pairs.row_meta)
        from posbench.experiments.patching import evaluate, logit_diff

        ablated = {"none": float(evaluate(model, clean, logit_diff)[0].mean())}
        for mode in ("zero", "mean", "resample"):
            t0 = time.perf_counter()
            with model.intervene(HeadAblation(heads, mode=mode)):
                ablated[mode] = float(evaluate(model, clean, logit_diff)[0].mean())
            ablated[f"{mode}_seconds"] = round(time.perf_counter() - t0, 2)
        report["clean_logit_diff_with_top_heads_ablated"] = {k: round(v, 3) for k, v in ablated.items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
