"""The ``posbench`` command line: models, run, runs, report.

Exit codes: 0 success, 2 bad input (unknown model/probe, malformed option or data, text longer
than the context, unwritable store), 1 unexpected failure. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import BadOptionError, PosbenchError
from .options import parse_pairs


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_printer(msg: str) -> None:
    _say(f"posbench: {msg}")


# ---------------------------------------------------------------------------- commands
def cmd_models(args) -> int:
    from .zoo import ZOO

    if args.cards:
        from .model import load_model

        for alias in ZOO:
            try:
                model = load_model(alias, progress=_progress_printer)
            except PosbenchError as err:
                print(f"{alias}: unavailable ({err})")
                continue
            print(f"\n== {alias}")
            for k, v in model.card.summary_rows():
                print(f"  {k:24s} {v}")
        return 0
    width = max(map(len, ZOO))
    for alias, entry in ZOO.items():
        print(f"{alias:{width}s}  {entry.description}\n{'':{width}s}  from: {entry.source}")
    print("\nAlso: any HuggingFace hub name or local checkpoint folder. `posbench models --cards` prints model cards.")
    return 0


def _prepare_run(args, probe_name: str):
    """Validate everything that can be validated before a model is loaded."""
    from .registry import get_probe, parse_intervention
    from .store import Store

    probe_cls = get_probe(probe_name)
    owner = f"probe '{probe_cls.name}'"
    fields = {f.name for f in dataclasses.fields(probe_cls.Config)}
    options = parse_pairs(probe_cls.Config, args.option or [], owner)
    data, data_options = (None, {}) if args.data is None else probe_cls.load_data(args.data)
    options.update(data_options)
    if args.seq_len is not None:
        if "seq_len" not in fields:
            raise BadOptionError(f"--seq-len does not apply to probe '{probe_cls.name}'")
        options.update(parse_pairs(probe_cls.Config, [f"seq_len={args.seq_len}"], owner))
    if args.n is not None:  # sequences per input kind, whatever the probe calls it
        targets = [f for f in ("n_sequences", "n_natural", "n_random") if f in fields]
        if not targets:
            raise BadOptionError(f"--n does not apply to probe '{probe_cls.name}'")
        for field in targets:
            value = args.n + (args.n % 2 if field == "n_random" else 0)  # random sequences come in pairs
            options.update(parse_pairs(probe_cls.Config, [f"{field}={value}"], owner))
    probe = probe_cls(**options)
    interventions = [parse_intervention(s) for s in (args.intervention or [])]
    store = Store(args.store)  # fails now if unwritable, before any compute
    return probe, data, interventions, store


def cmd_run(args) -> int:
    from .model import load_model

    probe, data, interventions, store = _prepare_run(args, args.probe)
    model = load_model(args.model, progress=_progress_printer)
    _say(f"posbench: running {probe.name} on {model.model_id}")
    result = probe.run(model, data=data, interventions=interventions, progress=not args.quiet)
    run_id = store.save(result)
    print(f"run {run_id}: {result.title()}  (store: {store.path})")
    for k, v in result.summary.items():
        print(f"  {k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps({"run_id": run_id, "summary": result.summary}, indent=1, default=str))
    return 0


def cmd_runs(args) -> int:
    from .store import Store

    store = Store(args.store, readonly=True)
    frame = store.runs(model=args.model, probe=args.probe)
    if frame.empty:
        print(f"no runs in {store.path}")
        return 0
    frame["interventions"] = frame["interventions"].map(
        lambda ivs: "+".join(iv["name"] for iv in ivs) if ivs else "-"
    )
    print(frame[["run_id", "created_at", "model_id", "probe", "interventions", "data_digest"]].to_string(index=False))
    return 0


def cmd_report(args) -> int:
    from .model import load_model
    from .registry import probes
    from .report import write_report
    from .store import Store

    store = Store(args.store)
    model = load_model(args.model, progress=_progress_printer)
    results, skipped = [], {}
    for name, probe_cls in probes().items():
        if not probe_cls.reported:
            continue
        reason = probe_cls.not_applicable(model)
        if reason:
            skipped[name] = reason
            _say(f"posbench: skipping {name}: {reason}")
            continue
        probe = probe_cls()
        run_id = None if args.rerun else store.latest(model.model_id, name, probe.get_params(), [], data_source="default")
        if run_id is None:
            _say(f"posbench: running {name} on {model.model_id} (not in the store yet)")
            result = probe.run(model, progress=not args.quiet)
            store.save(result)
        else:
            _say(f"posbench: using stored run {run_id} of {name}")
            result = store.load(run_id)
        results.append(result)
    out = Path(args.out) if args.out else Path("posbench-report") / model.model_id.replace("/", "__")
    index = write_report(model.card, results, out, log=_progress_printer, skipped=skipped)
    print(index)
    return 0


def cmd_dashboard(args) -> int:
    from .app import create_app
    from .store import default_store_path

    path = Path(args.store) if args.store else default_store_path()
    app = create_app(path)
    _say(f"posbench: dashboard for {path} on http://{args.host}:{args.port}/")
    app.run(host=args.host, port=args.port, debug=False)
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .registry import interventions, probes

    parser = argparse.ArgumentParser(
        prog="posbench",
        description="Mechanistic-interpretability workbench for position effects in transformer LMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_models = sub.add_parser("models", help="list the offline model zoo", description="List zoo models.")
    p_models.add_argument("--cards", action="store_true", help="load each model and print its model card")
    p_models.set_defaults(func=cmd_models)

    probe_lines = "\n".join(f"  {n:18s} {c.summary}" for n, c in probes().items())
    iv_lines = "\n".join(f"  {n:18s} {c.summary}; {c.spec_help}" for n, c in interventions().items())
    p_run = sub.add_parser(
        "run",
        help="run one probe and store the result",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a probe on a model and save the result in the results store.",
        epilog=f"probes:\n{probe_lines}\n\ninterventions (--intervention NAME:ARGS):\n{iv_lines}",
    )
    p_run.add_argument("probe", help=f"one of: {', '.join(probes())}")
    p_run.add_argument("--model", "-m", required=True, help="zoo alias, local folder or HuggingFace hub name")
    p_run.add_argument("--data", help="the probe's data: a .txt/.jsonl file of texts (sinks also takes input kinds natural,random,repeated)")
    p_run.add_argument("--intervention", "-i", action="append", metavar="NAME:ARGS", help="repeatable; composes")
    p_run.add_argument("--option", "-o", action="append", metavar="KEY=VALUE", help="probe setting, repeatable")
    p_run.add_argument("--n", type=int, help="sequences per input kind")
    p_run.add_argument("--seq-len", type=int, help="tokens per sequence")
    p_run.add_argument("--store", help="results database (default posbench-results/results.sqlite or $POSBENCH_STORE)")
    p_run.add_argument("--json", metavar="PATH", help="also write the run id and summary as JSON")
    p_run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p_run.set_defaults(func=cmd_run)

    p_runs = sub.add_parser("runs", help="list stored runs", description="List stored runs, newest first.")
    p_runs.add_argument("--store", help="results database")
    p_runs.add_argument("--model", help="only this model")
    p_runs.add_argument("--probe", help="only this probe")
    p_runs.set_defaults(func=cmd_runs)

    p_rep = sub.add_parser(
        "report",
        help="write a self-contained HTML report for a model",
        description="Run every reported probe that is missing from the store, then write "
        "OUT/index.html (opens offline), OUT/results.json and OUT/tables/*.csv.",
    )
    p_rep.add_argument("--model", "-m", default=None, help="zoo alias, folder or hub name (default smollm2-135m-instruct)")
    p_rep.add_argument("--out", "-o", help="output folder (default posbench-report/MODEL)")
    p_rep.add_argument("--store", help="results database")
    p_rep.add_argument("--rerun", action="store_true", help="run the probes again even if stored")
    p_rep.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p_rep.set_defaults(func=cmd_report)

    p_dash = sub.add_parser("dashboard", help="browse stored runs in the browser (Dash)",
                            description="Serve the posbench dashboard over a results store (read-only).")
    p_dash.add_argument("--store", help="results database")
    p_dash.add_argument("--host", default="127.0.0.1")
    p_dash.add_argument("--port", type=int, default=8050)
    p_dash.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "report" and args.model is None:
        from .zoo import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    try:
        return args.func(args)
    except PosbenchError as err:
        _say(f"posbench: error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        _say("posbench: interrupted; nothing partial was stored")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
