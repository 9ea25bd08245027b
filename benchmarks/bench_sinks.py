"""Cost of the sink probe against the plain HuggingFace forward pass, and peak memory.

For each sequence length, three fresh processes measure (1) the plain HF forward with SDPA
attention over the same tokens, (2) the same with eager attention (what any pattern-reading
tool must use), and (3) the sink probe (bridge + hooks + in-hook reductions) over those tokens.
Reported: median wall time, ratio to the SDPA forward measured in the same run, peak RSS, and
the size a full attention cache (layers x heads x T^2 fp32) would have needed.

    python benchmarks/bench_sinks.py --model smollm2-135m-instruct --lengths 512 2048 8192
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, torch
mode, model_id, length, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
import posbench
from posbench.probes.sinks import SinkProbe
from posbench.zoo import ZOO, embedded_checkpoint
times = []
if mode in ("hf-sdpa", "hf-eager"):
    from transformers import AutoModelForCausalLM
    folder = embedded_checkpoint(model_id)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation=mode.split("-")[1]).eval()
    ids = torch.randint(100, model.config.vocab_size - 100, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter(); model.model(input_ids=ids); times.append(time.perf_counter() - t0)
else:
    model = posbench.load_model(model_id)
    probe = SinkProbe(seq_len=length, n_sequences=1, inputs=("random",), first_token_test=False, batch_size=1)
    for _ in range(repeats):
        t0 = time.perf_counter(); probe.run(model); times.append(time.perf_counter() - t0)
    cfg = model.card
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"times": times, "peak_mib": peak_kib / 1024}))
"""


def measure(mode: str, model: str, length: int, repeats: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, model, str(length), str(repeats)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the rows as JSON here too")
    args = parser.parse_args()
    import posbench

    card = posbench.load_model(args.model).card
    rows = []
    print(f"model {args.model}: {card.n_layers} layers x {card.n_heads} heads, torch threads {__import__('torch').get_num_threads()}")
    print("| tokens | HF SDPA forward (s) | HF eager forward (s) | sink probe (s) | probe / SDPA | probe / eager | peak RSS SDPA / eager / probe (MiB) | full attention cache would be (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        res = {mode: measure(mode, args.model, length, args.repeats) for mode in ("hf-sdpa", "hf-eager", "probe")}
        med = {m: statistics.median(r["times"][1:] or r["times"]) for m, r in res.items()}
        full_cache = card.n_layers * card.n_heads * length * length * 4 / 2**20
        row = {
            "tokens": length,
            **{f"{m}_s": round(v, 3) for m, v in med.items()},
            "ratio_sdpa": round(med["probe"] / med["hf-sdpa"], 2),
            "ratio_eager": round(med["probe"] / med["hf-eager"], 2),
            **{f"{m}_peak_mib": round(r["peak_mib"]) for m, r in res.items()},
            "full_cache_mib": round(full_cache),
        }
        rows.append(row)
        print(f"| {length} | {row['hf-sdpa_s']} | {row['hf-eager_s']} | {row['probe_s']} | {row['ratio_sdpa']}x | {row['ratio_eager']}x "
              f"| {row['hf-sdpa_peak_mib']} / {row['hf-eager_peak_mib']} / {row['probe_peak_mib']} | {row['full_cache_mib']} |", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"model": args.model, "rows": rows, "time": time.strftime("%Y-%m-%d")}, fh, indent=1)


if __name__ == "__main__":
    main()
