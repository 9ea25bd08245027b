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
    parts = [f'<section id="{html.escape(result.probe)}"><h2>{html.escape(result.title())}</h2>']
    parts.append(
        f'<p class="meta">run {html.escape(str(result.run_id))} · {html.escape(result.metadata.get("started_at", ""))}'
        f' · {result.metadata.get("seconds", "?")} s · attention {html.escape(str(result.metadata.get("attn_implementation")))}'
        f' · weights {html.escape(str(result.metadata.get("weights")))} · data {result.data_digest}</p>'
    )
    if result.interventions:
        parts.append(f"<p><b>Interventions:</b> {html.escape(json.dumps(result.interventions))}</p>")
    parts.append(result.summary_frame().to_html(index=False, classes="summary", border=0))
    from .registry import get_probe

    for title, frame in get_probe(result.probe).report_tables(result).items():
        parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(frame.to_html(index=False, border=0) if len(frame) else "<p>none</p>")
    for name, fig in result.figures.items():
        fig.update_layout(template="plotly_white", height=420, margin={"t": 60, "l": 60, "r": 20, "b": 50})
        parts.append(f'<div class="figure" data-figure="{html.escape(name)}">')
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"{result.probe}-{name}"))
        parts.append("</div>")
    config = html.escape(json.dumps(result.config, indent=1, default=str))
    parts.append(f"<details><summary>configuration</summary><pre>{config}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


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
