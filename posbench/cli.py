"""The ``posbench`` command line: models, run, runs, report, import, dashboard.

Exit codes: 0 success; 2 bad input (unknown model/probe, malformed option, spec or data, a
request over the limits, an unusable store or output path), always one line on stderr
(``posbench: error: ...``) with nothing run and nothing stored; 3 a result was computed but the
store could not take it: it is in a recovery file that ``posbench import`` stores later; 1 an
unexpected failure (a bug: please report it with the traceback). Warnings are one line too.

Heavy libraries (torch, transformers, pandas, plotly) are imported only by the commands that
need them, so ``posbench --help`` and ``posbench models`` answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import BadOptionError, OutputPathError, PosbenchError, PosbenchWarning, StoreBusyError
from .options import coerce, parse_pairs


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_printer(msg: str) -> None:
    _say(f"posbench: {msg}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, PosbenchWarning):
        _say(f"posbench: warning: {message}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


# ---------------------------------------------------------------------------- output paths
def _writable_folder(path: Path, flag: str) -> None:
    """``path`` is a folder that exists or can be created: checked before any work is done."""
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} is a file, not a folder: pass a folder path (it is created if missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{flag} {path} cannot be created: {existing} is a file; pass another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path} cannot be written: {existing} is not writable; pass another folder")


def _writable_file(path: Path, flag: str) -> None:
    """``path`` is a file that can be written in a folder that exists: checked before any work."""
    if path.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder: pass a file path such as {path / 'run.json'}")
    if not path.parent.is_dir():
        raise OutputPathError(f"{flag} {path}: folder {path.parent} does not exist; create it or pass another path")
    target = path if path.exists() else path.parent
    if not os.access(target, os.W_OK):
        raise OutputPathError(f"{flag} {path} is not writable: fix its permissions or pass another path")


# ---------------------------------------------------------------------------- commands
def cmd_models(args) -> int:
    from .zoo import ZOO

    if args.cards:
        from .zoo import zoo_card

        for alias in ZOO:
            try:
                card = zoo_card(alias, progress=_progress_printer)  # config and tokenizer (cached), no weights
            except PosbenchError as err:
                print(f"{alias}: unavailable ({err})")
                continue
            print(f"\n== {alias}")
            for k, v in card.summary_rows():
                print(f"  {k:24s} {v}")
        return 0
    width = max(map(len, ZOO))
    for alias, entry in ZOO.items():
        print(f"{alias:{width}s}  {entry.description}\n{'':{width}s}  from: {entry.source}")
    print("\nAlso: any HuggingFace hub name or local checkpoint folder. `posbench models --cards` prints model cards.")
    return 0


def _flag_options(probe_cls, flag: str, value: int, fields: list[str], owner: str) -> dict[str, Any]:
    """A convenience flag (``--n``, ``--seq-len``) as probe options; errors name the flag."""
    if not fields:
        raise BadOptionError(f"{flag} does not apply to probe '{probe_cls.name}': see `posbench run --help`")
    out = {}
    for field in fields:
        v = value + (value % 2 if field == "n_random" else 0)  # random sequences come in pairs
        try:
            out[field] = coerce(probe_cls.Config, field, v, owner)
        except BadOptionError as err:
            raise BadOptionError(f"{flag} {value}: {err}") from None
    return out


def _prepare_run(args, probe_name: str):
    """Validate everything that can be validated before a model is loaded: options, data,
    interventions, output paths, the store and the size of the request."""
    from .limits import check_request
    from .registry import get_probe, parse_intervention
    from .store import Store

    probe_cls = get_probe(probe_name)
    owner = f"probe '{probe_cls.name}'"
    fields = [f.name for f in dataclasses.fields(probe_cls.Config)]
    options = parse_pairs(probe_cls.Config, args.option or [], owner)
    data, data_options = (None, {}) if args.data is None else probe_cls.load_data(args.data)
    options.update(data_options)
    if args.seq_len is not None:
        options.update(_flag_options(probe_cls, "--seq-len", args.seq_len, [f for f in fields if f == "seq_len"], owner))
    if args.n is not None:  # sequences per input kind, whatever the probe calls it
        targets = [f for f in ("n_sequences", "n_natural", "n_random", "n_items") if f in fields]
        options.update(_flag_options(probe_cls, "--n", args.n, targets, owner))
    probe = probe_cls(**options)
    interventions = [parse_intervention(s) for s in (args.intervention or [])]
    if args.json:
        _writable_file(Path(args.json), "--json")
    check_request(probe)
    store = Store(args.store)  # fails now if unwritable or foreign, before any compute
    return probe, data, interventions, store


def _write_json(path: str, payload: dict[str, Any], stored: str) -> None:
    try:
        Path(path).write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    except OSError as err:
        raise OutputPathError(f"{stored}, but --json {path} could not be written ({err.strerror}): pass another path") from None


def _print_summary(head: str, result) -> None:
    print(head)
    for k, v in result.summary.items():
        print(f"  {k}: {v}")


def cmd_run(args) -> int:
    from .model import load_model

    probe, data, interventions, store = _prepare_run(args, args.probe)
    model = load_model(args.model, progress=_progress_printer)
    _say(f"posbench: running {probe.name} on {model.model_id}")
    result = probe.run(model, data=data, interventions=interventions, progress=not args.quiet)
    try:
        run_id = store.save(result)
    except StoreBusyError as err:
        _print_summary(f"run {result.run_id}: {result.title()}  (NOT stored: see below)", result)
        if args.json:
            _write_json(args.json, {"run_id": result.run_id, "stored": False, "recovery_file": str(err.recovery_path),
                                    "summary": result.summary}, f"run {result.run_id} is in {err.recovery_path}")
        raise
    _print_summary(f"run {run_id}: {result.title()}  (store: {store.path})", result)
    if args.json:
        _write_json(args.json, {"run_id": run_id, "stored": True, "summary": result.summary},
                    f"run {run_id} was saved in {store.path}")
    return 0


def cmd_runs(args) -> int:
    from .protocols import intervention_label
    from .store import Store

    store = Store(args.store, readonly=True)
    frame = store.runs(model=args.model, probe=args.probe)
    if frame.empty:
        print(f"no runs in {store.path}")
        return 0
    frame["interventions"] = frame["interventions"].map(
        lambda ivs: " + ".join(intervention_label(iv) for iv in ivs) if ivs else "-"
    )
    print(frame[["run_id", "created_at", "model_id", "probe", "interventions", "data_digest"]].to_string(index=False))
    return 0


def _report_models(args) -> list[str]:
    from .zoo import DEFAULT_MODEL

    models = list(args.model or [])
    for part in args.models or []:
        models += [m.strip() for m in part.split(",") if m.strip()]
    models = list(dict.fromkeys(models))  # each model once, in the order given
    return models or [DEFAULT_MODEL]


class _ReportModel:
    """A report's model, loaded only when a probe has to run: while every run is in the store, a
    zoo model's cached card (no weights, no torch import) answers what the report needs."""

    def __init__(self, alias: str):
        from .zoo import ZOO, zoo_card

        self.alias, self._model = alias, None
        self.card = zoo_card(alias, progress=_progress_printer) if alias in ZOO else self.load().card
        self.model_id = self.card.model_id

    def load(self):
        if self._model is None:
            from .model import load_model

            self._model = load_model(self.alias, progress=_progress_printer)
            self.card, self.model_id = self._model.card, self._model.model_id
        return self._model

    def validate(self, intervention) -> None:
        try:
            intervention.validate(self)
        except AttributeError:  # it asks more than the card: ask the loaded model
            intervention.validate(self.load())

    def not_applicable(self, probe_cls) -> str | None:
        try:
            return probe_cls.not_applicable(self)
        except AttributeError:  # the probe asks more than the card: ask the loaded model
            return probe_cls.not_applicable(self.load())


@dataclasses.dataclass
class _PlannedRun:
    """One run a report needs: a probe under some interventions, stored already (``run_id``) or
    not; ``tokens`` is what its time estimate planned (``Probe.planned_tokens``)."""

    probe: Any
    interventions: tuple
    run_id: str | None
    tokens: int | None = None

    @property
    def label(self) -> str:
        return self.probe.name + (" under " + " + ".join(iv.name for iv in self.interventions) if self.interventions else "")


def _plan_report(store, model: _ReportModel, args, interventions) -> tuple[list[_PlannedRun], dict[str, str]]:
    """Every run of the suite (plain and under each intervention) with the newest stored run of
    it (default data, same config and interventions), none with ``--rerun``; and the probes
    skipped as not applicable."""
    from .registry import probes
    from .report import in_suite

    plan, skipped = [], {}
    for name, probe_cls in probes().items():
        if not in_suite(probe_cls, args.suite):
            continue
        reason = model.not_applicable(probe_cls)
        if reason:
            skipped[name] = reason
            _say(f"posbench: skipping {name}: {reason}")
            continue
        probe = probe_cls()
        for ivs in [(), *((iv,) for iv in interventions)]:
            plan.append(_PlannedRun(probe, ivs, _stored_run_id(store, model, probe, ivs, args)))
    return plan, skipped


def _stored_run_id(store, model: _ReportModel, probe, interventions, args) -> str | None:
    if args.rerun:
        return None
    described = json.loads(json.dumps([iv.describe() for iv in interventions], default=str))
    run_id = store.latest(model.model_id, probe.name, probe.get_params(), described, data_source="default")
    if run_id is None and described:
        # an intervention that calibrates on the model (DoPE's chosen masks) records more params
        # after it ran than it has before: a stored run matches when its params extend the spec's
        runs = store.runs(model=model.model_id, probe=probe.name)
        recorded = dict(zip(runs.run_id, runs.interventions))  # read from the index, no tables loaded
        for rid in store.intervened(model.model_id, probe.name, probe.get_params()):
            stored = recorded[rid]
            if len(stored) == len(described) and all(
                s["name"] == d["name"] and all(s["params"].get(k) == v for k, v in d["params"].items())
                for s, d in zip(stored, described)
            ):
                return rid
    return run_id


def _plan_showcases(store, model: _ReportModel, plain: list[_PlannedRun], args, interventions
                    ) -> tuple[list[_PlannedRun], dict[str, str]]:
    """Each registered intervention through the probe it declares (``posbench.report.showcases``)
    unless ``--no-showcase``; one that does not fit the model is listed with the reason instead."""
    from .report import showcases

    if args.no_showcase:
        return [], {}
    ran = {p.probe.name: p.probe for p in plain}
    runs, not_shown = showcases(ran, asked=[iv.name for iv in interventions], suite=args.suite)
    plan = []
    for probe_name, iv in runs:
        run_id = _stored_run_id(store, model, ran[probe_name], (iv,), args)
        try:
            if run_id is None:
                model.validate(iv)
        except PosbenchError as err:
            _not_showing(not_shown, iv, err)
            continue
        plan.append(_PlannedRun(ran[probe_name], (iv,), run_id))
    return plan, not_shown


def _not_showing(not_shown: dict[str, str], intervention, err: PosbenchError) -> None:
    not_shown[intervention.name] = f"does not fit this model: {err}"
    _say(f"posbench: not showing {intervention.name}: {err}")


def _announce(store, model: _ReportModel, plan: list[_PlannedRun]) -> float | None:
    """Say which runs are reused and which will run, with a time estimate (``posbench.estimate``);
    returns this model's calibration (seconds per token) when something will run."""
    from .estimate import calibrate, describe, estimate

    todo = [p for p in plan if p.run_id is None]
    speed, estimates = None, []
    if todo:
        loaded = model.load()
        speed = calibrate(loaded)
        for p in todo:
            try:
                with loaded.intervene(*p.interventions):
                    p.tokens = p.probe.planned_tokens(loaded)
            except PosbenchError:  # the run itself will say what is wrong
                p.tokens = None
            estimates.append(estimate(p.probe, p.label, model.model_id, store.timings(p.probe.name), speed, p.tokens,
                                      intervened=bool(p.interventions)))
    for line in describe(model.model_id, [p.label for p in plan if p.run_id], estimates):
        _say(f"posbench: {line}")
    return speed


def _stored_or_run(store, model: _ReportModel, planned: _PlannedRun, args, unsaved, speed: float | None):
    """The planned run's stored result, or a fresh run, stored (with what its estimate used)."""
    if planned.run_id is not None:
        _say(f"posbench: using stored run {planned.run_id} of {planned.label}")
        return store.load(planned.run_id)
    _say(f"posbench: running {planned.label} on {model.model_id} (not in the store yet)")
    result = planned.probe.run(model.load(), interventions=planned.interventions, progress=not args.quiet)
    if speed is not None:
        from .estimate import record

        record(result, speed, planned.tokens)
    try:
        store.save(result)
    except StoreBusyError as err:  # keep going: the result is safe and still goes in the report
        _say(f"posbench: warning: {err}")
        unsaved.append(err)
    return result


def _model_report(alias, out, store, args, interventions, unsaved):
    from .report import write_report

    model = _ReportModel(alias)
    for iv in interventions:
        iv.validate(model.load())
    plan, skipped = _plan_report(store, model, args, interventions)
    shows, not_shown = _plan_showcases(store, model, plan, args, interventions)
    speed = None if args.quiet else _announce(store, model, plan + shows)
    done = [(p, _stored_or_run(store, model, p, args, unsaved, speed)) for p in plan]
    for p in shows:
        try:
            done.append((p, _stored_or_run(store, model, p, args, unsaved, speed)))
        except PosbenchError as err:  # a showcase that fits the model but not the probe's inputs
            _not_showing(not_shown, p.interventions[0], err)
    results = [r for p, r in done if not p.interventions]
    intervened = []
    for plain in [p for p in plan if not p.interventions]:
        asked = [r for p, r in done if p.interventions and p.probe is plain.probe]
        asked_ids = {r.run_id for r in asked}
        stored = [store.load(rid) for rid in store.intervened(model.model_id, plain.probe.name, plain.probe.get_params())
                  if rid not in asked_ids]
        intervened += asked + stored
    page = write_report(model.card, results, out, log=_progress_printer, skipped=skipped, intervened=intervened,
                        not_shown=not_shown)
    return model.card, results, page


def cmd_report(args) -> int:
    from .registry import parse_intervention
    from .report import ModelReport, write_index
    from .store import Store

    models = _report_models(args)
    several = len(models) > 1
    root = Path(args.out) if args.out else Path("posbench-report") / ("" if several else models[0].replace("/", "__"))
    _writable_folder(root, "--out")
    interventions = [parse_intervention(s) for s in (args.intervention or [])]
    store = Store(args.store)
    unsaved: list = []
    reports = []
    for alias in models:
        out = root / alias.replace("/", "__") if several else root
        card, results, page = _model_report(alias, out, store, args, interventions, unsaved)
        reports.append(ModelReport(card, results, page))
        if not several:
            print(page)
    if several:
        print(write_index(reports, root, log=_progress_printer))
    return StoreBusyError.exit_code if unsaved else 0


def cmd_import(args) -> int:
    from .store import Store

    store = Store(args.store)
    for path in args.files:
        run_id, new = store.import_bundle(path)
        if new:
            print(f"imported run {run_id} from {path} into {store.path} (you may delete {path})")
        else:
            print(f"run {run_id} from {path} is already in {store.path}")
    return 0


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_dashboard(args) -> int:
    from .store import Store, default_store_path

    path = Path(args.store).expanduser() if args.store else default_store_path()
    if path.exists():
        Store(path, readonly=True)  # a foreign, damaged or unreadable store is an error now, not an empty page
    if not _is_loopback(args.host):
        _say(
            f"posbench: warning: the dashboard has no authentication: --host {args.host} lets anyone who can reach "
            f"this machine on port {args.port} read every stored run; keep the default 127.0.0.1 (use an SSH tunnel "
            "to view it remotely) unless you trust that network"
        )
    from .app import create_app

    app = create_app(path)
    _say(f"posbench: dashboard for {path} on http://{args.host}:{args.port}/")
    app.run(host=args.host, port=args.port, debug=False)
    return 0


# ---------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """One-line usage errors (``posbench: error: ...``, exit 2) and help texts built on demand
    (``lazy_epilog``), so that building the parser imports nothing heavy."""

    lazy_epilog: Callable[[], str] | None = None

    def error(self, message: str):
        self.exit(2, f"posbench: error: {message} (see `{self.prog} --help`)\n")

    def format_help(self) -> str:
        if self.lazy_epilog is not None:
            self.epilog = self.lazy_epilog()
        return super().format_help()


class _Once(argparse.Action):
    """A single-valued flag that refuses to be given twice (argparse would keep the last)."""

    def __init__(self, *args, hint: str = "give it once", **kwargs):
        self.hint = hint
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given", set())
        if self.dest in given:
            flag = max(self.option_strings, key=len)
            parser.error(f"{flag} given twice ({getattr(namespace, self.dest)!r} and {values!r}): {self.hint}")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port '{text}' is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 1-65535")
    return port


def _run_epilog() -> str:
    from .registry import interventions, probes

    probe_lines = "\n".join(f"  {n:18s} {c.summary}" for n, c in probes().items())
    iv_lines = "\n".join(f"  {n:18s} {c.summary}; {c.spec_help}" for n, c in interventions().items())
    return f"probes:\n{probe_lines}\n\ninterventions (--intervention NAME:ARGS):\n{iv_lines}"


STORE_HELP = ("results database (default $POSBENCH_STORE, else $XDG_DATA_HOME/posbench/results.sqlite, "
              "i.e. ~/.local/share/posbench/results.sqlite)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="posbench",
        description="Mechanistic-interpretability workbench for position effects in transformer LMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_models = sub.add_parser("models", help="list the offline model zoo", description="List zoo models.")
    p_models.add_argument("--cards", action="store_true", help="print each model's card (read from its config and tokenizer; no weights are loaded)")
    p_models.set_defaults(func=cmd_models)

    p_run = sub.add_parser(
        "run",
        help="run one probe and store the result",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a probe on a model and save the result in the results store.",
    )
    p_run.lazy_epilog = _run_epilog
    p_run.add_argument("probe", help="a registered probe (listed below)")
    p_run.add_argument("--model", "-m", required=True, action=_Once, help="zoo alias, local folder or HuggingFace hub name")
    p_run.add_argument("--data", action=_Once, help="the probe's data: a .txt/.jsonl file of texts (sinks also takes input kinds natural,random,repeated)")
    p_run.add_argument("--intervention", "-i", action="append", metavar="NAME:ARGS", help="repeatable; composes")
    p_run.add_argument("--option", "-o", action="append", metavar="KEY=VALUE", help="probe setting, repeatable")
    p_run.add_argument("--n", type=int, action=_Once, help="sequences per input kind (position-bias: dataset rows per task)")
    p_run.add_argument("--seq-len", type=int, action=_Once, help="tokens per sequence")
    p_run.add_argument("--store", action=_Once, help=STORE_HELP)
    p_run.add_argument("--json", action=_Once, metavar="PATH", help="also write the run id and summary as JSON")
    p_run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p_run.set_defaults(func=cmd_run)

    p_runs = sub.add_parser("runs", help="list stored runs", description="List stored runs, newest first.")
    p_runs.add_argument("--store", action=_Once, help=STORE_HELP)
    p_runs.add_argument("--model", action=_Once, help="only this model")
    p_runs.add_argument("--probe", action=_Once, help="only this probe")
    p_runs.set_defaults(func=cmd_runs)

    p_rep = sub.add_parser(
        "report",
        help="write self-contained HTML reports for one or several models",
        description="Run every probe of the suite that is missing from the store, then write "
        "OUT/index.html (opens offline), OUT/results.json and OUT/tables/*.csv and *.parquet. "
        "With several models: one such folder per model and OUT/index.html comparing them.",
    )
    p_rep.add_argument("--model", "-m", action="append", metavar="MODEL",
                       help="zoo alias, folder or hub name; repeat for several models (default smollm2-135m-instruct)")
    p_rep.add_argument("--models", action="append", metavar="A,B",
                       help="several models, comma-separated: one report each plus OUT/index.html comparing them")
    p_rep.add_argument("--out", "-o", action=_Once,
                       help="output folder (default posbench-report/MODEL; with several models posbench-report, "
                       "one sub-folder per model)")
    p_rep.add_argument("--suite", choices=("standard", "full"), default="standard", action=_Once,
                       help="standard: the probes that take minutes on a CPU (default); full: every probe")
    p_rep.add_argument("--intervention", "-i", action="append", metavar="NAME:ARGS",
                       help="also run the suite under this intervention and show it beside the plain runs; repeatable")
    p_rep.add_argument("--no-showcase", action="store_true",
                       help="skip the runs that show each intervention through one probe (e.g. sinks with positions "
                       "starting at 1000, position bias under PINE)")
    p_rep.add_argument("--store", action=_Once, help=STORE_HELP)
    p_rep.add_argument("--rerun", action="store_true", help="run the probes again even if stored")
    p_rep.add_argument("--quiet", "-q", action="store_true", help="no progress bars, no time estimate")
    p_rep.set_defaults(func=cmd_report)

    p_imp = sub.add_parser(
        "import", help="store results saved in recovery files",
        description="Store the results that posbench saved in recovery files (*.posbench.zip) because the store "
        "was busy or unwritable. Importing a result twice stores it once.",
    )
    p_imp.add_argument("files", nargs="+", metavar="FILE", help="recovery files")
    p_imp.add_argument("--store", action=_Once, help=STORE_HELP)
    p_imp.set_defaults(func=cmd_import)

    p_dash = sub.add_parser("dashboard", help="browse stored runs in the browser (Dash)",
                            description="Serve the posbench dashboard over a results store (read-only). It has no "
                            "authentication: keep it on 127.0.0.1.")
    p_dash.add_argument("--store", action=_Once, help=STORE_HELP)
    p_dash.add_argument("--host", default="127.0.0.1", action=_Once,
                        help="interface to listen on (default 127.0.0.1; anything else warns: no authentication)")
    p_dash.add_argument("--port", type=_port, default=8050, action=_Once)
    p_dash.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error (2), already printed
        return done.code if isinstance(done.code, int) else 2
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except PosbenchError as err:
        _say(f"posbench: error: {' '.join(str(err).split())}")
        return err.exit_code
    except KeyboardInterrupt:
        _say("posbench: interrupted; nothing partial was stored")
        return 130
    finally:
        warnings.showwarning = _default_showwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
