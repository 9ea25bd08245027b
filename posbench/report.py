"""Per-model reports: one self-contained HTML file (plotly.js embedded once, opens offline) plus
machine-readable results (``results.json`` and one CSV per table)."""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path
from typing import Callable, Sequence

from .card import ModelCard
from .protocols import ProbeResult, package_versions

_TEMPLATE = Path(__file__).with_name("templates") / "report.html"


def _card_html(card: ModelCard) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in card.summary_rows()
    )
    return f'<table class="card">{rows}</table>'


def _section(result: ProbeResult) -> str:
    from .render import render, to_html

    body = to_html(render(result), figure_height=420, heading="h2", div_prefix=result.probe)
    return f'<section id="{html.escape(result.probe)}">{body}</section>'


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
    toc = " · ".join(f'<a href="#{html.escape(r.probe)}">{html.escape(r.probe)}</a>' for r in results)
    page = _TEMPLATE.read_text(encoding="utf-8")
    page = (
        page.replace("{{title}}", html.escape(f"posbench report: {card.model_id}"))
        .replace("{{generated}}", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        .replace("{{versions}}", html.escape(", ".join(f"{k} {v}" for k, v in package_versions().items())))
        .replace("{{card}}", _card_html(card))
        .replace("{{toc}}", toc)
        .replace("{{sections}}", sections)
        .replace("{{plotlyjs}}", get_plotlyjs())  # last: nothing is substituted inside plotly.js
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
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
                "tables": {name: f"tables/{r.probe}__{name}.csv" for name in r.tables},
            }
            for r in results
        },
        "skipped": skipped or {},
    }
    (out / "results.json").write_text(json.dumps(machine, indent=1, default=str), encoding="utf-8")
    for r in results:
        for name, frame in r.tables.items():
            frame.to_csv(out / "tables" / f"{r.probe}__{name}.csv", index=False)
    if log:
        log(f"wrote {index} and {out / 'results.json'}")
    return index
