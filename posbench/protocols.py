"""The three shared protocols: Probe, Intervention, ProbeResult.

Data flows one way: model -> capture (hooks) -> reduce (while hooks fire) -> table (pandas)
-> figure (plotly, built from the tables only) -> store. See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import html
import json
import platform
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import pandas as pd

from .errors import BadOptionError

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from .model import Hook, HookedModel


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("posbench", "torch", "transformers", "transformer-lens", "nnsight", "pandas", "plotly"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def digest(obj: Any) -> str:
    """A short, stable digest of the data a probe saw (token ids, texts, settings)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- interventions
class Intervention(ABC):
    """Something done to the hooked model while probes read it (Tl hook-based, composable).

    Subclasses give ``name``, ``hooks(model)`` and ``params()``. Use as
    ``with model.intervene(a, b): ...`` or pass ``interventions=(a, b)`` to any probe; every
    result produced inside records ``describe()`` of each active intervention.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    spec_help: ClassVar[str] = ""  # CLI grammar after "name:", e.g. "LAYER.HEAD[,LAYER.HEAD...]"

    @abstractmethod
    def hooks(self, model: "HookedModel") -> list["Hook"]:
        """(hook name, fn) pairs; fn(tensor, hook) returns the edited tensor."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able parameters that fully describe this intervention."""

    def validate(self, model: "HookedModel") -> None:
        """Raise a clear PosbenchError if this intervention does not fit the model."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params()}

    @classmethod
    def from_spec(cls, arg: str) -> "Intervention":
        raise BadOptionError(f"intervention '{cls.name}' cannot be built from the command line")

    def on(self, model: "HookedModel"):
        """Context manager applying this intervention alone: ``with iv.on(model): ...``."""
        return model.intervene(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------- results
@dataclass
class ProbeResult:
    """What a probe measured: tidy tables, a headline summary and full provenance."""

    probe: str
    model_id: str
    config: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    summary: dict[str, Any]
    model_card: dict[str, Any]
    interventions: list[dict[str, Any]] = field(default_factory=list)
    data_digest: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def figures(self) -> dict[str, "go.Figure"]:
        from .registry import get_probe

        return get_probe(self.probe).figures(self)

    def table(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    def title(self) -> str:
        under = (
            " under " + " + ".join(_intervention_label(iv) for iv in self.interventions)
            if self.interventions
            else ""
        )
        return f"{self.probe} on {self.model_id}{under}"

    def summary_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [(k, _fmt(v)) for k, v in self.summary.items()], columns=["measure", "value"]
        )

    def _repr_html_(self) -> str:
        parts = [f"<h3>{html.escape(self.title())}</h3>"]
        if self.interventions:
            parts.append(
                "<p><b>Interventions:</b> "
                + html.escape(json.dumps(self.interventions))
                + "</p>"
            )
        parts.append(self.summary_frame().to_html(index=False))
        for i, fig in enumerate(self.figures.values()):
            # plotly.js inline with the first figure: renders in an offline notebook too
            parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
        tables = ", ".join(f"{k} ({len(v)} rows)" for k, v in self.tables.items())
        parts.append(f"<p>Tables: {html.escape(tables)}; data digest {self.data_digest}</p>")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"<ProbeResult {self.title()}: {', '.join(self.tables)}>"


def _intervention_label(iv: dict[str, Any]) -> str:
    params = ",".join(f"{k}={v}" for k, v in iv.get("params", {}).items())
    return f"{iv['name']}({params})"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------- probes
class Probe(ABC):
    """A measurement on a hooked model, configured like a scikit-learn estimator.

    ``SinkProbe(seq_len=64).run(model, data=None, interventions=())`` returns a ProbeResult.
    Subclasses define ``name``, a ``Config`` dataclass, ``measure`` and ``figures``.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Config: ClassVar[type]
    reported: ClassVar[bool] = True  # part of `posbench report`

    def __init__(self, config: Any = None, **overrides: Any):
        base = config if config is not None else self.Config()
        known = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise BadOptionError(
                f"unknown option(s) {', '.join(unknown)} for probe '{self.name}': "
                f"it takes {', '.join(sorted(known))}"
            )
        self.config = dataclasses.replace(base, **overrides)
        self.check_config()

    def check_config(self) -> None:
        """Raise BadOptionError for impossible settings."""

    @classmethod
    def not_applicable(cls, model: "HookedModel") -> str | None:
        """Why this probe cannot run on ``model`` (None if it can): reports skip such probes."""
        return None

    def get_params(self) -> dict[str, Any]:
        """The configuration as JSON-native values (tuples become lists), as stored."""
        return json.loads(json.dumps(dataclasses.asdict(self.config), default=str))

    def run(
        self,
        model: "HookedModel",
        data: Any = None,
        interventions: Sequence[Intervention] = (),
        progress: bool = False,
    ) -> ProbeResult:
        started = _dt.datetime.now(_dt.timezone.utc)
        t0 = time.perf_counter()
        with model.intervene(*interventions):
            applied = model.active_interventions
            tables, summary, data_record = self.measure(model, data, progress=progress)
        return ProbeResult(
            probe=self.name,
            model_id=model.model_id,
            config=self.get_params(),
            tables=tables,
            summary=summary,
            model_card=model.card.to_dict(),
            interventions=applied,
            data_digest=digest(data_record),
            metadata={
                "started_at": started.isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - t0, 3),
                "attn_implementation": model.card.attn_implementation,
                "weights": model.card.weights,
                "versions": package_versions(),
                "data": {k: v for k, v in data_record.items() if k != "tokens"},
            },
        )

    @abstractmethod
    def measure(
        self, model: "HookedModel", data: Any, progress: bool = False
    ) -> tuple[dict[str, pd.DataFrame], dict[str, Any], dict[str, Any]]:
        """Capture and reduce: return (tables, summary, data_record for the digest)."""

    @classmethod
    def figures(cls, result: ProbeResult) -> dict[str, "go.Figure"]:
        return {}

    @classmethod
    def report_tables(cls, result: ProbeResult) -> dict[str, pd.DataFrame]:
        """Small tables worth reading in a report (the full tables go to CSV)."""
        return {}
