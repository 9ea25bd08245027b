"""The cost per token (``Probe.work_factor``) behind `posbench report`'s time estimate.

For each model: calibrate (``posbench.estimate.calibrate``: seconds per token of a small plain
forward pass), run each probe of the standard suite at a reduced size, calibrate again, and
report ``factor = seconds / (planned tokens x calibration)`` (calibration: the mean of the two,
against load drift). The factors in the probes' ``work_factor`` are the geometric means over the
embedded models (docs/faces.md, "Time estimates").

    OMP_NUM_THREADS=1 python benchmarks/estimate_factors.py [--models smollm2-135m-instruct gemma-3-270m]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import posbench
from posbench.estimate import calibrate
from posbench.registry import get_probe

REDUCED = {
    "sinks": {"n_sequences": 4},
    "positional-heads": {"n_random": 2, "n_natural": 2, "n_repeated": 1},
    "rope-usage": {"n_sequences": 2, "n_random": 2, "n_repeated": 1},
    "position-bias": {"n_items": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--probes", nargs="+", default=list(REDUCED))
    args = parser.parse_args()
    factors: dict[str, list[float]] = {p: [] for p in args.probes}
    for name in args.models:
        model = posbench.load_model(name)
        for probe_name in args.probes:
            probe = get_probe(probe_name)(**REDUCED[probe_name])
            if probe.not_applicable(model):
                continue
            before = calibrate(model)
            tokens = probe.planned_tokens(model)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe.run(model, progress=False)
            seconds = time.perf_counter() - t0
            speed = (before + calibrate(model)) / 2
            factor = seconds / (tokens * speed)
            factors[probe_name].append(factor)
            print(f"{name:24s} {probe_name:18s} {seconds:7.1f} s  {tokens:8,d} tokens  "
                  f"{speed * 1e6:7.1f} us/token  factor {factor:6.2f}", flush=True)
    for probe_name, values in factors.items():
        if values:
            print(f"{probe_name:18s} work_factor = {math.exp(sum(map(math.log, values)) / len(values)):.2f}")


if __name__ == "__main__":
    main()
