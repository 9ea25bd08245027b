"""PINE judged with the position-bias probe: accuracy, MCQ consistency, judge flips, plain vs PINE.

For each model and task (``mcq``, ``judge``, optionally ``kv``) the position-bias probe runs
twice through its public API (``PositionBiasProbe(...).run(model, interventions=...)``): once
plain and once under ``Pine()`` (Wang et al., ICLR 2025). The stored result of each run records
its intervention (``--store`` saves them). One tidy row per model x task x intervention:

* ``accuracy`` over every variant;
* mcq: ``consistency_labels_fixed`` (Zheng et al.: contents shift under fixed A-D; label-token
  bias fails it, and PINE does not remove it: a label moves with its segment) and
  ``consistency_labels_move`` (the same labelled options in other slots: only position bias
  fails it, so PINE must give 1); ``top_slot_share`` / ``top_label_share``: the share of
  verdicts on the most chosen slot / label token (every label rotation; 0.25 = none preferred);
* judge: ``flip_rate`` / ``first_slot_rate`` with the labels fixed (the usual swap) and with the
  labels moving with the answers (``*_labels_move``: PINE must give flip rate 0);
* diagnostics of exact invariance: ``max_reorder_dlogp`` — over every group of variants that are
  pure permutations of the same segments, the largest spread of one choice's log-probability
  (PINE: ~1e-5 in fp32) — and ``min_top_gap``, the smallest gap between the best and the
  second-best choice (a near-tie can flip an argmax without any invariance failure);
* ``wall_s`` and ``cpu_s`` of the run;
* ``--also-unpacked`` adds a PINE run with one row per continuation (``pack="off"``; by default
  PINE scores packed rows, several continuations per row, since it reads each branch's position
  ids) and its ``max_dlogp_vs_packed``: the largest difference of any score from the packed run's.

    OMP_NUM_THREADS=1 python benchmarks/pine_position_bias.py --mcq-items 8 --judge-items 8 --out pine_pb.csv
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


def permutation_groups(scores: pd.DataFrame) -> pd.DataFrame:
    """The scores with ``group``: variants in one group hold the same segments in other slots
    (kv: every gold slot of one row; mcq/judge: one row x label assignment)."""
    from posbench.probes.position_bias.analysis import permutation_view

    view = permutation_view(scores)
    return view.assign(group=view["task"] + "|" + view["item_id"] + "|n" + view["n_segments"].astype(str))


def invariance_diagnostics(scores: pd.DataFrame) -> dict[str, float]:
    """Largest spread of a choice's log-probability across pure permutations, and the smallest
    best-vs-second-best gap of any variant."""
    view = permutation_groups(scores)
    spread = view.groupby(["group", "meta_content"])["logprob"].agg(lambda s: s.max() - s.min())
    top2 = scores.groupby(["item_id", "variant"])["logprob"].apply(lambda s: np.subtract(*np.sort(s.to_numpy())[::-1][:2]))
    return {"max_reorder_dlogp": float(spread.max()), "min_top_gap": float(top2.min())}


def row_for(result, task: str) -> dict:
    """One tidy row of headline numbers from a position-bias result of one task."""
    t = result.tables
    s = result.summary
    row: dict = {}
    if task == "kv":
        n = int(t["scores"]["n_segments"].iloc[0])
        row["accuracy"] = s.get(f"kv.n{n}.accuracy")
        row["consistency_labels_move"] = s.get(f"kv.n{n}.consistency")  # gold moved: a pure permutation
    else:
        row["accuracy"] = s.get(f"{task}.accuracy")
    if task == "mcq":
        row["consistency_labels_fixed"] = s.get("mcq.consistency_labels_fixed")
        row["consistency_labels_move"] = s.get("mcq.consistency_labels_move")
        sel = t["selection"]
        for by in ("slot", "label"):
            rates = sel[(sel["task"] == "mcq") & (sel["by"] == by)]
            top = rates.loc[rates["rate"].idxmax()]
            row[f"top_{by}"], row[f"top_{by}_share"] = top["value"], float(top["rate"])
    if task == "judge":
        judge = t["judge"].set_index("protocol")
        row["flip_rate"] = float(judge.loc["labels fixed", "flip_rate"])
        row["first_slot_rate"] = float(judge.loc["labels fixed", "first_slot_rate"])
        if "labels move" in judge.index:
            row["flip_rate_labels_move"] = float(judge.loc["labels move", "flip_rate"])
            row["first_slot_rate_labels_move"] = float(judge.loc["labels move", "first_slot_rate"])
    n_variants = t["scores"].drop_duplicates(["item_id", "variant"]).shape[0]
    row.update(n_items=int(t["scores"]["item_id"].nunique()), n_prompts=n_variants,
               prompt_tokens=float(t["lengths"]["prompt_tokens"].mean()), **invariance_diagnostics(t["scores"]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--tasks", default="mcq,judge", help="comma-separated: mcq, judge, kv")
    parser.add_argument("--mcq-items", type=int, default=8)
    parser.add_argument("--judge-items", type=int, default=8)
    parser.add_argument("--kv-items", type=int, default=4)
    parser.add_argument("--kv-pairs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--also-unpacked", action="store_true",
                        help="add a PINE run with one row per continuation (pack=off), to compare time and scores")
    parser.add_argument("--out", help="write the table as CSV")
    parser.add_argument("--store", help="save every run to this posbench store (SQLite)")
    args = parser.parse_args()

    import torch

    import posbench
    from posbench.interventions.pine import Pine
    from posbench.probes.position_bias import PositionBiasProbe
    from posbench.store import Store

    torch.set_num_threads(args.threads)
    store = Store(args.store) if args.store else None
    sizes = {"mcq": dict(n_items=args.mcq_items), "judge": dict(n_items=args.judge_items),
             "kv": dict(n_items=args.kv_items, n_segments=(args.kv_pairs,), slots=0)}
    rows = []
    for model_id in args.models:
        model = posbench.load_model(model_id)
        for task in args.tasks.split(","):
            runs = [("none", (), "auto"), ("pine", (Pine(),), "auto")]
            if args.also_unpacked:
                runs.append(("pine, unpacked", (Pine(),), "off"))
            packed_scores = None
            for label, interventions, pack in runs:
                probe = PositionBiasProbe(task=task, attention=False, attnrank=False, n_boot=0, pack=pack, **sizes[task])
                wall, cpu = time.perf_counter(), time.process_time()
                result = probe.run(model, interventions=interventions, progress=False)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if store is not None:
                    store.save(result)
                scores = result.tables["scores"]["logprob"].to_numpy()
                extra = {}
                if label == "pine":
                    packed_scores = scores
                elif label == "pine, unpacked":
                    extra["max_dlogp_vs_packed"] = float(f"{np.abs(scores - packed_scores).max():.3g}")
                rows.append({"model": model_id, "task": task, "intervention": label,
                             **row_for(result, task), **extra, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})
                print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
                if args.out:
                    pd.DataFrame(rows).to_csv(args.out, index=False)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
