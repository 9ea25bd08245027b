"""Speed and memory of posbench against what users would otherwise run (issue 13).

For each probe and length, fresh processes measure the same batches of tokens through:

* ``probe``        the probe on posbench's fast path (SDPA forward, statistics from q/k in chunks);
* ``probe-eager``  the probe on the eager reference path (the bridge's eager attention);
* ``hf-sdpa``      the plain HuggingFace forward with SDPA attention over the batches the probe
                   ran (the decoder only; with the LM head for passes that needed logits/loss);
* ``tl-cache``     TransformerLens ``run_with_cache`` with every hook over the same batches (what
                   users do today); skipped, with the size it would need, when the cache alone
                   exceeds ``--cache-budget-gib``.

Each (mode, probe, length) runs in a fresh process: one short warm-up pass (one-time costs), then
``--repeats`` timed runs (median), and the process's peak RSS. Ratios are to ``hf-sdpa`` in the
same benchmark run. Also: the load time of each cached embedded model (fresh process, median of
3; target < 3 s), the cost of ``posbench report`` per embedded model, and with ``--long`` the
sinks and positional-heads probes on gemma-3-270m at 16k and 32k tokens (target: < 24 GiB).

    python benchmarks/bench_speed.py                       # everything, both embedded models
    python benchmarks/bench_speed.py --models smollm2-135m-instruct --lengths 512 2048 --probes sinks
    python benchmarks/bench_speed.py --long                # + gemma 16k / 32k

Writes ``--out``/speed.json and speed.md (the table the README quotes). Timings on a shared
machine are noisy; memory (peak RSS in a fresh process) is not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EMBEDDED = ("smollm2-135m-instruct", "gemma-3-270m")
PROBES = ("sinks", "positional-heads", "rope-usage")
MODES = ("probe", "probe-eager", "hf-sdpa", "tl-cache")
WARMUP_TOKENS = 64
GIB = 2**30


# ---------------------------------------------------------------------------- probe settings
def long_text(model, length: int) -> str:
    """Project-written paragraphs joined (and repeated) until they make ``length`` tokens."""
    from posbench.data import natural_texts

    paragraphs = natural_texts()
    text, i = "", 0
    while len(model.tokenize([text])[0]) < length:
        text += ("\n\n" if text else "") + paragraphs[i % len(paragraphs)]
        i += 1
    return text


def probe_at(name: str, model, length: int):
    """(probe, data) processing sequences of ``length`` tokens: one random sequence (sinks); a
    pair of random sequences, one natural text and one repeated half (positional-heads); one
    natural text, plus the two p-RoPE band passes (rope-usage)."""
    from posbench.registry import probes

    cls = probes()[name]
    if name == "sinks":
        return cls(seq_len=length, n_sequences=1, inputs=("random",), first_token_test=False, batch_size=1), None
    if name == "positional-heads":
        return cls(seq_len=length, n_random=2, n_natural=1, n_repeated=1, repeat_len=length // 2 - 1,
                   batch_size=2), [long_text(model, length)]
    if name == "rope-usage":
        return cls(seq_len=length, n_sequences=1, batch_size=1), [long_text(model, length)]
    raise SystemExit(f"no benchmark settings for probe '{name}': add them to probe_at()")


# ---------------------------------------------------------------------------- child processes
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_probe(model_id: str, probe: str, length: int, repeats: int, attention: str) -> dict:
    """Run the probe; report times, peak RSS and the batches (shape, needed logits) it ran."""
    import posbench

    model = posbench.load_model(model_id, attn_implementation=attention)
    passes: list[tuple[list[int], bool]] = []
    run = model.backend.run

    def recording(batch, captures=(), *args, **kwargs):
        logits = kwargs.get("logits", False) or any(getattr(c, "site", None) == "final_norm" for c in captures)
        passes.append((list(batch.input_ids.shape), bool(logits)))
        return run(batch, captures, *args, **kwargs)

    model.backend.run = recording
    warm, data = probe_at(probe, model, WARMUP_TOKENS)
    warm.run(model, data)
    times = []
    for _ in range(repeats):
        passes.clear()
        instance, data = probe_at(probe, model, length)
        t0 = time.perf_counter()
        instance.run(model, data)
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_mib": peak_rss_mib(), "passes": passes}


def child_hf_sdpa(model_id: str, passes: list, repeats: int) -> dict:
    """The plain HF forward (SDPA) over batches of the given shapes (random ordinary tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    from posbench.zoo import embedded_checkpoint

    model = AutoModelForCausalLM.from_pretrained(embedded_checkpoint(model_id), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size

    def forward(shape, logits):
        ids = torch.randint(100, vocab - 100, tuple(shape), generator=gen)
        with torch.no_grad():
            (model if logits else model.model)(input_ids=ids)

    forward([1, WARMUP_TOKENS], False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for shape, logits in passes:
            forward(shape, logits)
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_mib": peak_rss_mib()}


def cache_bytes(cache, length: int, target: int) -> float:
    """What a run_with_cache cache measured at ``length`` tokens would weigh at ``target``: each
    tensor scales with (target / length) ** (number of its axes of size ``length``)."""
    total = 0.0
    for tensor in cache.values():
        k = sum(1 for s in tensor.shape if s == length)
        total += tensor.numel() * tensor.element_size() * (target / length) ** k
    return total


def child_tl_cache(model_id: str, passes: list, repeats: int, budget_gib: float) -> dict:
    """TransformerLens run_with_cache with every hook (the bridge, eager attention) over the batches."""
    import torch

    import posbench

    bridge = posbench.load_model(model_id, attn_implementation="eager").backend.bridge
    probe_len = 96
    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.randint(100, 1000, (1, probe_len)))
    need = sum(cache_bytes(cache, probe_len, shape[1]) * shape[0] for shape, _ in passes) / max(len(passes), 1)
    del cache
    if need > budget_gib * GIB:
        return {"skipped": f"cache would need {need / GIB:.0f} GiB", "cache_gib": need / GIB}
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for shape, _ in passes:
            ids = torch.randint(100, 1000, tuple(shape), generator=gen)
            with torch.no_grad():
                _, cache = bridge.run_with_cache(ids)
            del cache
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_mib": peak_rss_mib(), "cache_gib": need / GIB}


def child_load(model_id: str) -> dict:
    t0 = time.perf_counter()
    import transformer_lens.model_bridge  # noqa: F401  (the libraries, imported once per process)
    import transformers  # noqa: F401

    import posbench

    t1 = time.perf_counter()
    posbench.load_model(model_id)
    return {"import_s": t1 - t0, "load_s": time.perf_counter() - t1, "peak_mib": peak_rss_mib()}


def child_main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    import torch

    torch.set_num_threads(spec["threads"])
    kind = spec.pop("kind")
    spec.pop("threads")
    result = {"probe": child_probe, "hf-sdpa": child_hf_sdpa, "tl-cache": child_tl_cache, "load": child_load}[kind](**spec)
    print("RESULT " + json.dumps(result))


def in_fresh_process(kind: str, threads: int, **spec) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps({"kind": kind, "threads": threads, **spec})],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1][len("RESULT "):])


def report_cost(model_id: str) -> dict:
    """``posbench report`` on a fresh store: wall time and peak RSS of that process alone."""
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = (
            "import resource, subprocess, sys, time; t0 = time.perf_counter(); "
            "rc = subprocess.run(sys.argv[1:]).returncode; "
            "print('RESULT', time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, rc)"
        )
        cli = [sys.executable, "-m", "posbench.cli", "report", "--model", model_id,
               "--store", f"{tmp}/r.sqlite", "--out", f"{tmp}/report", "-q"]
        done = subprocess.run([sys.executable, "-c", wrapper, *cli], capture_output=True, text=True)
        line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT")), None)
        if line is None:
            return {"error": done.stderr.strip().splitlines()[-1:]}
        seconds, peak, rc = line.split()[1:]
        return {"seconds": float(seconds), "peak_mib": float(peak), "exit": int(rc)}


# ---------------------------------------------------------------------------- the suite
def median(result: dict) -> float | None:
    return statistics.median(result["times"]) if "times" in result else None


def ratio(a, b) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def measure_row(model: str, probe: str, length: int, modes, repeats: int, threads: int, budget: float) -> dict:
    res = {"probe": in_fresh_process("probe", threads, model_id=model, probe=probe, length=length,
                                     repeats=repeats, attention="sdpa")}
    passes = res["probe"].get("passes", [])
    if "hf-sdpa" in modes and passes:
        res["hf-sdpa"] = in_fresh_process("hf-sdpa", threads, model_id=model, passes=passes, repeats=repeats)
    if "probe-eager" in modes:
        res["probe-eager"] = in_fresh_process("probe", threads, model_id=model, probe=probe, length=length,
                                              repeats=repeats, attention="eager")
    if "tl-cache" in modes and passes:
        res["tl-cache"] = in_fresh_process("tl-cache", threads, model_id=model, passes=passes, repeats=repeats,
                                           budget_gib=budget)
    base = median(res.get("hf-sdpa", {}))
    row = {"model": model, "probe": probe, "tokens": length, "passes": [p[0] for p in passes], "raw": res}
    for mode, r in res.items():
        row[f"{mode}_s"] = None if median(r) is None else round(median(r), 3)
        row[f"{mode}_peak_mib"] = None if "peak_mib" not in r else round(r["peak_mib"])
        row[f"{mode}_note"] = r.get("error") or r.get("skipped")
    row["ratio"] = ratio(median(res["probe"]), base)
    row["eager_ratio"] = ratio(median(res.get("probe-eager", {})), base)
    row["tl_cache_ratio"] = ratio(median(res.get("tl-cache", {})), base)
    row["rss_ratio"] = ratio(row.get("probe_peak_mib"), row.get("hf-sdpa_peak_mib"))
    return row


def fmt(value, suffix="") -> str:
    return "-" if value is None else f"{value}{suffix}"


def markdown(rows: list[dict], loads: dict, reports: dict, context: dict) -> str:
    out = [f"Measured {context['date']} on {context['machine']} ({context['threads']} torch threads){context['note']}.", ""]
    out += ["| model | probe | tokens | HF SDPA fwd (s) | probe (s) | probe / SDPA | eager probe / SDPA "
            "| TL run_with_cache / SDPA | peak RSS SDPA / probe / eager (MiB) | RSS probe / SDPA |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        tl = fmt(r["tl_cache_ratio"], "x") if r.get("tl-cache_note") is None else r["tl-cache_note"]
        eager = fmt(r["eager_ratio"], "x") if r.get("probe-eager_note") is None else r["probe-eager_note"]
        out.append(
            f"| {r['model']} | {r['probe']} | {r['tokens']} | {fmt(r.get('hf-sdpa_s'))} | {fmt(r.get('probe_s'))} "
            f"| {fmt(r['ratio'], 'x')} | {eager} | {tl} | {fmt(r.get('hf-sdpa_peak_mib'))} / {fmt(r.get('probe_peak_mib'))} "
            f"/ {fmt(r.get('probe-eager_peak_mib'))} | {fmt(r['rss_ratio'], 'x')} |"
        )
    if loads:
        out += ["", "| model | import transformers, transformer-lens, posbench (s, once per process) | load_model from cache (s) | target |", "|---|---:|---:|---|"]
        for model, r in loads.items():
            out.append(f"| {model} | {fmt(r.get('import_s'))} | {fmt(r.get('load_s'))} | < 3 s: "
                       f"{'yes' if (r.get('load_s') or 99) < 3 else 'no'} |")
    if reports:
        out += ["", "| model | `posbench report` (s) | peak RSS (MiB) |", "|---|---:|---:|"]
        for model, r in reports.items():
            out.append(f"| {model} | {fmt(r.get('seconds'))} | {fmt(r.get('peak_mib'))} |")
    return "\n".join(out) + "\n"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(EMBEDDED))
    parser.add_argument("--probes", nargs="+", default=list(PROBES))
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192, 16384])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--eager-max", type=int, default=8192, help="longest length run on the eager path")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median) up to 2048 tokens")
    parser.add_argument("--repeats-long", type=int, default=1, help="timed runs per mode (median) above 2048 tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every child (default: torch's)")
    parser.add_argument("--cache-budget-gib", type=float, default=8.0, help="largest run_with_cache attempted")
    parser.add_argument("--long", action="store_true", help="also gemma-3-270m sinks / positional-heads at 16k and 32k")
    parser.add_argument("--no-load", action="store_true", help="skip the load-time measurement")
    parser.add_argument("--no-report", action="store_true", help="skip the posbench report measurement")
    parser.add_argument("--note", default="", help="said after the machine in the markdown (e.g. 'shared, noisy')")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    import torch

    threads = args.threads or torch.get_num_threads()
    context = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} ({os.cpu_count()} cores)",
               "threads": threads, "note": f", {args.note}" if args.note else "", "torch": torch.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, loads, reports = [], {}, {}

    def save():
        (out / "speed.json").write_text(json.dumps({"context": context, "rows": rows, "load": loads, "report": reports},
                                                   indent=1))
        (out / "speed.md").write_text(markdown(rows, loads, reports, context))

    if not args.no_load:
        for model in args.models:
            runs = [in_fresh_process("load", threads, model_id=model) for _ in range(3)]
            ok = [r for r in runs if "load_s" in r]
            loads[model] = {k: round(statistics.median(r[k] for r in ok), 2) for k in ("import_s", "load_s")} if ok else runs[0]
            print(model, "load", loads[model], flush=True)
            save()
    plan = [(m, p, n) for m in args.models for p in args.probes for n in args.lengths]
    if args.long:
        plan += [("gemma-3-270m", p, n) for p in ("sinks", "positional-heads") for n in (16384, 32768)
                 if ("gemma-3-270m", p, n) not in plan]
    for model, probe, length in plan:
        modes = [m for m in args.modes if m != "probe-eager" or length <= args.eager_max]
        repeats = args.repeats if length <= 2048 else args.repeats_long
        row = measure_row(model, probe, length, modes, repeats, threads, args.cache_budget_gib)
        rows.append(row)
        print(f"{model} {probe} {length}: probe {fmt(row.get('probe_s'))} s, SDPA {fmt(row.get('hf-sdpa_s'))} s, "
              f"ratio {fmt(row['ratio'])}, eager {fmt(row['eager_ratio'])}, TL {fmt(row['tl_cache_ratio'])}, "
              f"RSS {fmt(row.get('probe_peak_mib'))} MiB ({fmt(row['rss_ratio'])}x)", flush=True)
        save()
    if not args.no_report:
        for model in args.models:
            reports[model] = report_cost(model)
            print(model, "report", reports[model], flush=True)
            save()
    save()
    print((out / "speed.md").read_text())


if __name__ == "__main__":
    main()
