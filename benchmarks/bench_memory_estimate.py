"""How the memory estimate of posbench.limits compares with the measured peak of real runs.

Each run goes in a fresh subprocess; the peak is the growth of the resident set (ru_maxrss) over
the process after the model is loaded and warmed up, against ``Workload.peak_bytes``.

    python benchmarks/bench_memory_estimate.py [--model smollm2-135m-instruct] [--probe sinks] [--seq-lens 512 1024 2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

RUN = textwrap.dedent(
    """
    import json, resource, sys, warnings
    import posbench
    from posbench.limits import workload
    from posbench.registry import get_probe
    model = posbench.load_model(sys.argv[1])
    probe = get_probe(sys.argv[2])(**json.loads(sys.argv[3]))
    model.run(model.batch(model.tokenize(["warm up"])))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe.run(model)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    work = workload(probe.config)
    estimate = work.peak_bytes(model.card.n_heads, model.card.d_model, model.card.n_layers)
    print(json.dumps({"measured": peak, "estimate": estimate}))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--probe", default="sinks", choices=["sinks", "positional-heads"])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    print(f"{'seq_len':>8} {'measured MiB':>13} {'estimate MiB':>13} {'estimate/measured':>18}")
    for seq_len in args.seq_lens:
        config = {"seq_len": seq_len, "batch_size": args.batch}
        if args.probe == "positional-heads":
            config.update(n_random=args.batch, n_natural=2, n_repeated=1)
        else:  # one batch of random tokens: the peak of one forward pass
            config.update(n_sequences=args.batch, inputs=["random"], first_token_test=False)
        done = subprocess.run([sys.executable, "-c", RUN, args.model, args.probe, json.dumps(config)],
                              capture_output=True, text=True, check=True)
        out = json.loads(done.stdout.strip().splitlines()[-1])
        m, e = out["measured"] / 2**20, out["estimate"] / 2**20
        print(f"{seq_len:>8} {m:>13.0f} {e:>13.0f} {e / max(m, 1e-9):>18.2f}")


if __name__ == "__main__":
    main()
