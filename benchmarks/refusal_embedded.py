"""The refusal probe on the embedded models: what the README and docs/refusal.md report.

Runs the probe at the sizes docs/refusal.md reports for both embedded models (``small``: about
10 minutes per model on the shared 2-core CPU), with its default configuration (what ``posbench
report --suite full`` shows) or with a larger one (more train/val instructions, every condition,
Arditi-style selection), saves each to a results store, and prints the numbers: validation
separation per layer, the chosen direction, refusal rates per condition, the decision-token
scores and their fall at the first answer token, the ranked heads and the effect of ablating them.

    python benchmarks/refusal_embedded.py --model smollm2-135m-instruct gemma-3-270m --only small
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd

import posbench
from posbench.probes.refusal import CONDITIONS, RefusalProbe

SMALL = dict(n_train=24, n_val=12, n_generate=6, max_new_tokens=16, causal_heads=6)
LARGE = dict(n_train=32, n_val=16, n_generate=6, max_new_tokens=16, conditions=CONDITIONS, selection="ablation")


def show(result, seconds: float) -> None:
    t, s = result.tables, result.summary
    pd.set_option("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 80)
    print(f"\n=== {result.title()}  config={result.config}  ({seconds:.0f} s)")
    for k, v in s.items():
        print(f"  {k}: {v}")
    cand = t["candidates"]
    print("\nper layer: direction at the chosen position, probe at the last template token")
    per_layer = cand[cand.position == s["position"]][["layer", "dim_val_auroc", "dim_val_accuracy", "dim_val_d",
                                                       "direction_norm"]].merge(
        cand[cand.position == -1][["layer", "probe_val_accuracy", "probe_val_auroc"]], on="layer")
    print(per_layer.round(3).to_string(index=False))
    tried = cand.dropna(subset=["ablation_score"])
    if len(tried):
        print("\nablation-rule shortlist\n" + tried[["layer", "position", "ablation_score", "steering_score", "kl"]].round(3).to_string(index=False))
    print("\n" + t["behaviour"].round(3).to_string(index=False))
    print("\ntop heads\n" + t["heads"].sort_values("direct").head(10).round(4).to_string(index=False))
    g = t["generations"]
    print("\nanswers\n" + g[["condition", "label", "refused", "decision_probability", "response"]].assign(
        response=g.response.str.slice(0, 70).str.replace("\n", " ")).round(3).to_string(index=False))
    tr = t["trace"]
    base = tr[(tr.condition == "baseline") & (tr.rel >= -12) & (tr.rel <= 4)]
    for score in ("probability", "projection"):
        print(f"\nmean {score} around the decision token (baseline)\n"
              + base.groupby(["label", "rel"])[score].mean().unstack("rel").round(3).to_string())
    at = tr[tr.rel.isin([0, 1])].pivot_table(index=["condition", "label", "item"], columns="rel", values=["probability", "projection"])
    print("\nthe fall at the first answer token (rel 0 -> 1), per answer\n" + at.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--store", default="refusal-benchmark.sqlite")
    parser.add_argument("--only", choices=("small", "default", "large"), help="run one configuration only")
    args = parser.parse_args()
    store = posbench.Store(args.store)
    for name in args.model:
        model = posbench.load_model(name)
        for label, config in (("small", SMALL), ("default", {}), ("large", LARGE)):
            if args.only and label != args.only:
                continue
            t0 = time.perf_counter()
            result = RefusalProbe(**config).run(model, progress=True)
            seconds = time.perf_counter() - t0
            run_id = store.save(result)
            print(f"\n[{label}] run {run_id} in {args.store}; load average {os.getloadavg()}")
            show(result, seconds)


if __name__ == "__main__":
    main()
