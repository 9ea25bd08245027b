"""Per-model reports: one self-contained HTML file (plotly.js embedded once, opens offline) plus
machine-readable results (``results.json`` and one CSV per table).

Every value in the page is escaped (``posbench.render``); the template's ``{{slots}}`` are filled
in one pass, so a stored value that reads ``{{plotlyjs}}`` stays text; CSV file names are made of
``[A-Za-z0-9_-]`` only, so a stored table name cannot write outside the report folder.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
from pathlib import Path
from typing import Callable, Sequence

from .card import ModelCard
from .protocols import ProbeResult, package_versions
from .render import safe_id

_TEMPLATE = Path(__file__).with_name("templates") / "report.html"
_SLOT = re.compile(r"\{\{(\w+)\}\}")


def _card_html(card: ModelCard) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in card.summary_rows()
    )
    return f'<table class="card">{rows}</table>'


def _section(result: ProbeResult) -> str:
    from .render import render, to_html

    body = to_html(render(result), figure_height=420, heading="h2", div_prefix=result.probe)
    return f'<section id="{safe_id(result.probe)}">{body}</section>'


def fill(template: str, values: dict[str, str]) -> str:
    """``{{name}}`` slots replaced in one pass: text put in a slot is never read as a slot."""
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def _csv_names(results: Sequence[ProbeResult]) -> dict[tuple[int, str], str]:
    """One safe, distinct CSV file name per (result, table)."""
    names, used = {}, set()
    for i, r in enumerate(results):
        for table in r.tables:
            base = f"{safe_id(r.probe)}__{safe_id(table)}"
            name, k = f"{base}.csv", 1
            while name in used:
                k += 1
                name = f"{base}-{k}.csv"
            used.add(name)
            names[(i, table)] = name
    return names


def write_report(
    card: ModelCard,
    results: Sequence[ProbeResult],
    out_dir: str | Path,
    log: Callable[[str], None] | None = None,
    skipped: dict[str, str] | None = None,
) -> Path:
    """Write ``index.html``, ``results.json`` and ``tables/*.csv`` into ``out_dir``."""
    from plotly.offline import get_plotlyjs

    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    sections = "\n".join(_section(r) for r in results)
    if skipped:
        sections += "\n<section><h2>Not run</h2><ul>" + "".join(
            f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in skipped.items()
        ) + "</ul></section>"
    toc = " · ".join(f'<a href="#{safe_id(r.probe)}">{html.escape(r.probe)}</a>' for r in results)
    page = fill(_TEMPLATE.read_text(encoding="utf-8"), {
        "title": html.escape(f"posbench report: {card.model_id}"),
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": html.escape(", ".join(f"{k} {v}" for k, v in package_versions().items())),
        "card": _card_html(card),
        "toc": toc,
        "sections": sections,
        "plotlyjs": get_plotlyjs(),
    })
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    csv = _csv_names(results)
    machine = {
        "model": card.to_dict(),
        "versions": package_versions(),
        "probes": {
            r.probe: {
                "run_id": r.run_id,
                "config": r.config,
                "interventions": r.interventions,
                "summary": r.summary,
                "data_digest": r.data_digest,
                "metadata": r.metadata,
                "tables": {name: f"tables/{csv[(i, name)]}" for name in r.tables},
            }
            for i, r in enumerate(results)
        },
        "skipped": skipped or {},
    }
    (out / "results.json").write_text(json.dumps(machine, indent=1, default=str), encoding="utf-8")
    for i, r in enumerate(results):
        for name, frame in r.tables.items():
            frame.to_csv(out / "tables" / csv[(i, name)], index=False)
    if log:
        log(f"wrote {index} and {out / 'results.json'}")
    return index
