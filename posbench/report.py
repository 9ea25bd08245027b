"""Reports: one self-contained HTML page per model (plotly.js embedded once, opens offline) with
machine-readable results beside it (``results.json``, ``tables/*.csv`` and ``tables/*.parquet``),
and an index that compares several models on the same axes.

Each probe's section opens with its finding (``ProbeView.finding``: numbers, then the published
result it reproduces), then the summary with human names and units, reading tables, figures and
the configuration. A section "With and without interventions" puts the summaries of a probe run
plain and under each intervention side by side: every registered intervention is shown through
the probe it declares (``Intervention.showcase``, e.g. sinks with positions starting at 1000, PINE
under position bias), plus any the user passes with ``--intervention``.

Every value in the page is escaped (``posbench.render``); the template's ``{{slots}}`` are filled
in one pass, so a stored value that reads ``{{plotlyjs}}`` stays text; file names are made of
``[A-Za-z0-9_-]`` only, so a stored table name cannot write outside the report folder.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import pandas as pd

from .card import ModelCard
from .protocols import ProbeResult, _fmt, intervention_label, package_versions
from .render import _escape_frame, safe_finding, safe_id

if TYPE_CHECKING:
    from .protocols import Intervention

_TEMPLATE = Path(__file__).with_name("templates") / "report.html"
_SLOT = re.compile(r"\{\{(\w+)\}\}")
SUITES = ("standard", "full")


def in_suite(probe_cls, suite: str) -> bool:
    """``standard``: the probes marked ``reported`` (minutes on a CPU); ``full``: every probe."""
    return suite == "full" or bool(probe_cls.reported)


def _card_html(card: ModelCard) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in card.summary_rows()
    )
    return f'<h2>Model card</h2><div class="table-wrap"><table class="card">{rows}</table></div>'


def _section(result: ProbeResult) -> str:
    from .render import render, to_html

    body = to_html(render(result), figure_height=420, heading="h2", div_prefix=result.probe)
    return f'<section id="{safe_id(result.probe)}">{body}</section>'


def fill(template: str, values: dict[str, str]) -> str:
    """``{{name}}`` slots replaced in one pass: text put in a slot is never read as a slot."""
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def _page(title: str, toc: str, card: str, sections: str) -> str:
    from plotly.offline import get_plotlyjs

    return fill(_TEMPLATE.read_text(encoding="utf-8"), {
        "title": html.escape(title),
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": html.escape(", ".join(f"{k} {v}" for k, v in package_versions().items())),
        "card": card, "toc": toc, "sections": sections, "plotlyjs": get_plotlyjs(),
    })


def _table_names(results: Sequence[ProbeResult]) -> dict[tuple[int, str], str]:
    """One safe, distinct file stem per (result, table)."""
    names, used = {}, set()
    for i, r in enumerate(results):
        label = r.probe + ("__" + "_".join(iv["name"] for iv in r.interventions) if r.interventions else "")
        for table in r.tables:
            base = f"{safe_id(label)}__{safe_id(table)}"
            name, k = base, 1
            while name in used:
                k += 1
                name = f"{base}-{k}"
            used.add(name)
            names[(i, table)] = name
    return names


# ---------------------------------------------------------------------------- interventions
def showcases(ran: Iterable[str], asked: Iterable[str] = (), suite: str = "standard"
              ) -> tuple[list[tuple[str, "Intervention"]], dict[str, str]]:
    """Each registered intervention through the probe it declares (``Intervention.showcase``) for
    the "With and without interventions" section: the (probe, intervention) runs to make, and for
    every other intervention why it is not shown. ``ran``: the probes of this report; ``asked``:
    names of interventions the user passed (``--intervention``), which replace their showcase;
    costly showcases (``showcase_suite = "full"``) run with ``suite="full"`` only."""
    from .registry import interventions

    ran, asked = set(ran), set(asked)
    runs, notes = [], {}
    for name, cls in sorted(interventions().items()):
        if name in asked:
            continue
        if cls.showcase is None:
            notes[name] = cls.showcase_note or "no default showcase; pass it with --intervention"
        elif cls.showcase[0] not in ran:
            notes[name] = f"shown through {cls.showcase[0]}, which this report does not run"
        elif cls.showcase_suite == "full" and suite != "full":
            notes[name] = f"shown through {cls.showcase[0]} with --suite full (a costly run)"
        else:
            runs.append((cls.showcase[0], cls.from_spec(cls.showcase[1])))
    return runs, notes


def intervention_comparison(plain: ProbeResult, under: Sequence[ProbeResult]) -> pd.DataFrame:
    """One row per summary measure of ``plain``: its value without interventions and under each
    of ``under`` (same probe, model and configuration), side by side."""
    label = plain.view.metric_label
    columns = {"no intervention": plain.summary}
    for r in under:
        columns[" + ".join(intervention_label(iv) for iv in r.interventions)] = r.summary
    keys = list(plain.summary)
    return pd.DataFrame([{"measure": label(k), **{c: _fmt(s.get(k, "")) for c, s in columns.items()}} for k in keys])


def _interventions_section(results: Sequence[ProbeResult], intervened: Sequence[ProbeResult],
                           not_shown: Mapping[str, str] | None = None) -> str:
    h = html.escape
    parts = []
    for plain in results:
        under = [r for r in intervened if r.probe == plain.probe]
        if not under:
            continue
        parts.append(f"<h3>{h(plain.probe)}</h3>")
        for r in under:
            finding = safe_finding(r)
            if finding is not None:
                parts.append(f"<p><b>Under {h(' + '.join(intervention_label(iv) for iv in r.interventions))}:</b> "
                             f"{h(' '.join(finding.sentences))}</p>")
        parts.append(_escape_frame(intervention_comparison(plain, under), classes="interventions"))
    if not_shown:
        parts.append("<h3>Not shown here</h3><ul>" + "".join(
            f"<li>{h(k)}: {h(v)}</li>" for k, v in not_shown.items()) + "</ul>")
    if not parts:
        return ""
    return ('<section id="interventions"><h2>With and without interventions</h2>'
            "<p>Each probe's summary run plain and under each intervention (stored runs with the same configuration "
            "and default data).</p>" + "\n".join(parts) + "</section>")


# ---------------------------------------------------------------------------- one model
def write_report(
    card: ModelCard,
    results: Sequence[ProbeResult],
    out_dir: str | Path,
    log: Callable[[str], None] | None = None,
    skipped: dict[str, str] | None = None,
    intervened: Sequence[ProbeResult] = (),
    not_shown: Mapping[str, str] | None = None,
) -> Path:
    """Write ``index.html``, ``results.json`` and ``tables/*.csv`` + ``*.parquet`` into
    ``out_dir``; ``intervened`` are runs of the same probes under interventions; ``not_shown``: the
    interventions without such a run, and why."""
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    sections = "\n".join(_section(r) for r in results) + _interventions_section(results, intervened, not_shown)
    if skipped:
        sections += "\n<section><h2>Not run</h2><ul>" + "".join(
            f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in skipped.items()
        ) + "</ul></section>"
    toc = " · ".join(f'<a href="#{safe_id(r.probe)}">{html.escape(r.probe)}</a>' for r in results)
    if intervened or not_shown:
        toc += ' · <a href="#interventions">interventions</a>'
    index = out / "index.html"
    index.write_text(_page(f"posbench report: {card.model_id}", toc, _card_html(card), sections), encoding="utf-8")
    every = [*results, *intervened]
    stems = _table_names(every)

    def entry(i: int, r: ProbeResult) -> dict:
        finding = safe_finding(r)
        return {
            "run_id": r.run_id, "config": r.config, "interventions": r.interventions, "summary": r.summary,
            "finding": None if finding is None else {"sentences": finding.sentences, "published": finding.published,
                                                     "verdict": finding.verdict},
            "data_digest": r.data_digest, "metadata": r.metadata,
            "tables": {name: f"tables/{stems[(i, name)]}.csv" for name in r.tables},
        }

    machine = {
        "model": card.to_dict(),
        "versions": package_versions(),
        "probes": {r.probe: entry(i, r) for i, r in enumerate(results)},
        "interventions": [entry(len(results) + i, r) | {"probe": r.probe} for i, r in enumerate(intervened)],
        "skipped": skipped or {},
        "interventions_not_shown": dict(not_shown or {}),
    }
    (out / "results.json").write_text(json.dumps(machine, indent=1, default=str), encoding="utf-8")
    for i, r in enumerate(every):
        for name, frame in r.tables.items():
            frame.to_csv(out / "tables" / f"{stems[(i, name)]}.csv", index=False)
            frame.to_parquet(out / "tables" / f"{stems[(i, name)]}.parquet", index=False)
    if log:
        log(f"wrote {index} and {out / 'results.json'}")
    return index


# ---------------------------------------------------------------------------- several models
@dataclass
class ModelReport:
    """One model's report for the comparison index: its card, plain results and page."""

    card: ModelCard
    results: Sequence[ProbeResult]
    page: Path


def write_index(reports: Sequence[ModelReport], out_dir: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """``out_dir/index.html``: the models' findings side by side, each probe's comparison figures
    (``ProbeView.compare``) where at least two models have the probe, and a link to every report."""
    from .comparison import Comparison

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h = html.escape
    links = "".join(
        f'<li><a class="model-report" href="{h(r.page.relative_to(out).as_posix())}">{h(r.card.model_id)}</a>: '
        f"{h(r.card.architecture)}, {r.card.n_layers} layers × {r.card.n_heads} heads</li>"
        for r in reports
    )
    probes = list(dict.fromkeys(res.probe for r in reports for res in r.results))
    sections = [f'<section id="models"><h2>Model reports</h2><ul>{links}</ul></section>']
    for probe in probes:
        comparison = Comparison([res for r in reports for res in r.results if res.probe == probe])
        parts = [f'<section id="{safe_id(probe)}"><h2>{h(probe)}</h2>']
        if comparison.published():
            parts.append(f'<div class="finding"><p><b>Published.</b> {h(comparison.published())}</p></div>')
        parts.append(_escape_frame(comparison.findings(), classes="findings"))
        for name, fig in comparison.figures.items():
            fig.update_layout(template="plotly_white", height=420, margin={"t": 60, "l": 60, "r": 20, "b": 50})
            parts.append(f'<div class="figure" data-figure="{h(name)}">'
                         + fig.to_html(full_html=False, include_plotlyjs=False, div_id=safe_id(f"compare-{name}"))
                         + "</div>")
        parts += [f'<p class="problem">{h(p)}</p>' for p in comparison.problems]
        parts.append("</section>")
        sections.append("\n".join(parts))
    toc = " · ".join(['<a href="#models">models</a>', *(f'<a href="#{safe_id(p)}">{h(p)}</a>' for p in probes)])
    title = "posbench comparison: " + ", ".join(r.card.model_id for r in reports)
    index = out / "index.html"
    index.write_text(_page(title, toc, "", "\n".join(sections)), encoding="utf-8")
    summary = {r.card.model_id: {"report": r.page.relative_to(out).as_posix(),
                                 "summaries": {res.probe: res.summary for res in r.results}} for r in reports}
    (out / "results.json").write_text(json.dumps({"models": summary, "versions": package_versions()}, indent=1,
                                                 default=str), encoding="utf-8")
    if log:
        log(f"wrote {index}")
    return index
