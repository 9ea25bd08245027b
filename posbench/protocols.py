"""The three shared protocols: Probe, Intervention, ProbeResult.

Data flows one way: model -> capture (hooks) -> reduce (while hooks fire) -> table (pandas)
-> figure (plotly, built from the tables only) -> store. See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
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

    from .batch import Batch
    from .model import HookedModel
    from .notebook import FigureSet
    from .sites import AttentionOverride, Edit


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
    """Something done to the hooked model while probes read it; composable and recorded.

    Three kinds, by what they change (a class may combine them):

    * ``InputEdit`` rewrites the batch before the model sees it (position ids, masks, segments);
    * ``ActivationEdit`` replaces tensors at sites (``edits(model) -> [Edit]``);
    * ``AttentionEdit`` replaces the attention computation of chosen layers
      (``attention_overrides(model) -> [AttentionOverride]``).

    Use as ``with model.intervene(a, b): ...`` or pass ``interventions=(a, b)`` to any probe;
    every result produced inside records ``describe()`` of each active intervention. Two-run
    methods (activation patching) are experiments over a clean and a corrupted run, not
    interventions (``posbench.experiments``).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "activation"
    summary: ClassVar[str] = ""
    spec_help: ClassVar[str] = ""  # CLI grammar after "name:", e.g. "LAYER.HEAD[,LAYER.HEAD...]"
    # The options dataclass (``posbench.options.option`` fields): ``from_spec`` parses
    # ``key=value;key=value`` against it and constructors validate with ``options.build``.
    Config: ClassVar[type | None] = None
    # How ``posbench report`` shows it: (probe name, spec after "NAME:") run beside the plain
    # probe; None with ``showcase_note`` saying where else it is seen (or what it needs).
    showcase: ClassVar[tuple[str, str] | None] = None
    showcase_note: ClassVar[str] = ""
    showcase_suite: ClassVar[str] = "standard"  # "full": only ``--suite full`` runs the showcase (costly ones)
    # Packed scoring rows (several continuations behind a key mask, each branch's position ids
    # restarting at the prompt's end: ``posbench.scoring``) give under this intervention what one
    # row per continuation gives; ``pack="auto"`` packs only when every active one says so.
    keeps_packed_rows: ClassVar[bool] = False
    # ``edit_batch`` runs the tokens in another column order (``posbench.token_order``): the
    # attention statistics then keep each layer's rows whole to put them back in the user's
    # order, which ``posbench.limits`` plans memory for.
    reorders_tokens: ClassVar[bool] = False

    def edit_batch(self, batch: "Batch", model: "HookedModel") -> "Batch":
        """The batch this intervention runs instead (input edits)."""
        return batch

    def edits(self, model: "HookedModel") -> list["Edit"]:
        """Activation edits: (site, layers, fn) triples the backend applies in the forward pass."""
        return []

    def attention_overrides(self, model: "HookedModel") -> list["AttentionOverride"]:
        """Replacements of the attention scores of chosen layers."""
        return []

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able parameters that fully describe this intervention."""

    def validate(self, model: "HookedModel") -> None:
        """Raise a clear PosbenchError if this intervention does not fit the model."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params()}

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        """Option values meant by a spec part without ``=`` (e.g. ``0.25,highest``); by default
        every part must be ``KEY=VALUE``."""
        raise BadOptionError(
            f"malformed part '{part}' in --intervention {cls.name}: write KEY=VALUE ({cls.spec_help})"
        )

    @classmethod
    def from_spec(cls, arg: str) -> "Intervention":
        """Build from CLI text (after ``NAME:``) with the shared spec grammar of
        ``posbench.options.parse_spec``: ``key=value;key=value`` plus ``bare_spec`` parts."""
        if cls.Config is None:
            raise BadOptionError(f"intervention '{cls.name}' cannot be built from the command line")
        from .options import build, parse_spec

        owner = f"intervention '{cls.name}'"
        values = parse_spec(cls.Config, arg, owner, bare=cls.bare_spec, grammar=cls.spec_help)
        build(cls.Config, values, owner)  # options left out take their defaults, checked too
        return cls(**values)

    def on(self, model: "HookedModel"):
        """Context manager applying this intervention alone: ``with iv.on(model): ...``."""
        return model.intervene(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class InputEdit(Intervention):
    """An intervention that rewrites the batch (position ids, attention mask, segment layout)."""

    kind = "input"

    @abstractmethod
    def edit_batch(self, batch: "Batch", model: "HookedModel") -> "Batch": ...


class ActivationEdit(Intervention):
    """An intervention that replaces tensors at sites while the model runs."""

    kind = "activation"

    @abstractmethod
    def edits(self, model: "HookedModel") -> list["Edit"]: ...


class AttentionEdit(Intervention):
    """An intervention that replaces the attention scores of chosen layers."""

    kind = "attention"

    @abstractmethod
    def attention_overrides(self, model: "HookedModel") -> list["AttentionOverride"]: ...


# ---------------------------------------------------------------------------- results
@dataclass
class ProbeResult:
    """What a probe measured: tidy tables, a headline summary and full provenance.

    Figures and reading tables are not stored: the probe's view (``posbench.views``) rebuilds
    them from the tables, so a stored result renders exactly like a fresh one.
    """

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
    def view(self):
        from .registry import get_view

        return get_view(self.probe)

    @property
    def figures(self) -> "FigureSet":
        """The figures by name, rebuilt from the tables; displays as figures in Jupyter."""
        from .notebook import figure_set

        return figure_set(self.view.figures(self))

    def reading_tables(self) -> dict[str, pd.DataFrame]:
        return self.view.reading_tables(self)

    def table(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    def title(self) -> str:
        under = (
            " under " + " + ".join(intervention_label(iv) for iv in self.interventions)
            if self.interventions
            else ""
        )
        return f"{self.probe} on {self.model_id}{under}"

    def summary_frame(self) -> pd.DataFrame:
        """The summary as (human name with unit, value) rows; ``key`` keeps the stored key."""
        label = self.view.metric_label
        return pd.DataFrame(
            [(label(k), _fmt(v), k) for k, v in self.summary.items()], columns=["measure", "value", "key"]
        )

    def finding(self):
        """What this result shows in a few sentences of numbers, with the published comparison
        (``posbench.views.Finding``), or None."""
        return self.view.finding(self)

    def _repr_html_(self) -> str:
        from .notebook import plotlyjs_mode
        from .render import render, to_html

        return to_html(render(self), plotlyjs=plotlyjs_mode())

    def __repr__(self) -> str:
        run = f" run {self.run_id}" if self.run_id else ""
        tables = ", ".join(f"{name} {len(frame)}x{frame.shape[1]}" for name, frame in self.tables.items())
        return f"<ProbeResult {self.title()}{run}: tables {tables}>"


def intervention_label(iv: dict[str, Any]) -> str:
    params = ",".join(f"{k}={v}" for k, v in iv.get("params", {}).items())
    return f"{iv['name']}({params})"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------- probes
class Probe(ABC):
    """A measurement on a hooked model, configured like a scikit-learn estimator.

    ``SinkProbe(seq_len=64).run(model, data=None, interventions=())`` returns a ProbeResult.
    Subclasses define ``name``, a ``Config`` dataclass whose fields are ``posbench.options.option``s
    (types and bounds declared once), and ``measure``; figures and reading tables live in the
    probe's view (``posbench.views.ProbeView``) beside it.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Config: ClassVar[type]
    reported: ClassVar[bool] = True  # part of `posbench report`
    tags: ClassVar[tuple[str, ...]] = ()  # attention / behavioural / representation
    data_help: ClassVar[str] = "a .txt (paragraphs) or .jsonl ({\"text\": ...} per line) file of texts"
    # Options that only shape the probe's own default data (how many built-in texts, which
    # input kinds): left out of the stored config of a run on the user's data, which they did not shape.
    default_data_options: ClassVar[tuple[str, ...]] = ()
    # Seconds per planned token per second-per-token of a plain forward (``posbench.estimate``),
    # measured on the embedded models by benchmarks/estimate_factors.py; None: not measured.
    work_factor: ClassVar[float | None] = None

    def __init__(self, config: Any = None, **overrides: Any):
        from .options import validate

        base = config if config is not None else self.Config()
        known = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise BadOptionError(
                f"unknown option(s) {', '.join(unknown)} for probe '{self.name}': "
                f"it takes {', '.join(sorted(known))}"
            )
        self.config = validate(dataclasses.replace(base, **overrides), owner=f"probe '{self.name}'")
        self.check_config()

    def check_config(self) -> None:
        """Raise BadOptionError for impossible combinations of settings (single options are
        checked against their declared bounds before this)."""

    def planned_tokens(self, model: "HookedModel") -> int | None:
        """Tokens this run will feed through ``model`` (its time estimate scales with them): by
        default the sequences x length its options declare (``posbench.limits.workload``); None
        if they declare no length. Probes whose inputs decide it override this."""
        from .limits import workload

        work = workload(self.config)
        return None if work is None else work.total_tokens

    @classmethod
    def not_applicable(cls, model: "HookedModel") -> str | None:
        """Why this probe cannot run on ``model`` (None if it can): reports skip such probes."""
        return None

    @classmethod
    def load_data(cls, spec: str) -> tuple[Any, dict[str, Any]]:
        """What ``--data SPEC`` means for this probe: (data for ``run``, option overrides).

        By default a file of texts; probes with their own datasets override this.
        """
        from pathlib import Path

        from .data.texts import TextDataset
        from .errors import MalformedDataError

        if not Path(spec).exists():
            raise MalformedDataError(f"--data '{spec}' is not a file: probe '{cls.name}' takes {cls.data_help}")
        return TextDataset.from_file(spec).texts, {}

    @classmethod
    def check_data(cls, data: Any) -> Any:
        """User data passed to ``run``, validated like a ``--data`` file: a text or a list of
        texts goes through ``TextDataset`` (no empty text, no lone surrogate); other data (a
        probe's own datasets) passes through to the probe."""
        if isinstance(data, str):
            data = [data]
        if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
            from .data.texts import TextDataset

            return TextDataset([{"text": t} for t in data], source="the data passed to run()").texts
        return data

    def get_params(self, user_data: bool = False) -> dict[str, Any]:
        """The configuration as JSON-native values (tuples become lists), as stored; with
        ``user_data`` the options that only shape the default data are left out."""
        params = json.loads(json.dumps(dataclasses.asdict(self.config), default=str))
        if user_data:
            for name in self.default_data_options:
                params.pop(name, None)
        return params

    def run(
        self,
        model: "HookedModel",
        data: Any = None,
        interventions: Sequence[Intervention] = (),
        progress: bool | None = None,
    ) -> ProbeResult:
        """Measure ``model`` (under ``interventions``) on ``data`` (None: the probe's own data).
        ``progress``: bars for long work; by default on in a notebook or a terminal
        (``posbench.progress.default_enabled``), shown once the work takes a few seconds."""
        from .limits import check_fits
        from .progress import default_enabled

        if progress is None:
            progress = default_enabled()

        if data is not None:
            data = self.check_data(data)
        started = _dt.datetime.now(_dt.timezone.utc)
        t0 = time.perf_counter()
        with model.intervene(*interventions):
            check_fits(self, model)  # context and memory under the interventions, before any input is built
            applied = model.active_interventions
            tables, summary, data_record = self.measure(model, data, progress=progress)
        return ProbeResult(
            probe=self.name,
            model_id=model.model_id,
            config=self.get_params(user_data=data is not None),
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
                "backend": model.backend.describe(),
                "versions": package_versions(),
                "data_source": "default" if data is None else "user",
                "data": {k: v for k, v in data_record.items() if k != "tokens"},
            },
        )

    @abstractmethod
    def measure(
        self, model: "HookedModel", data: Any, progress: bool = False
    ) -> tuple[dict[str, pd.DataFrame], dict[str, Any], dict[str, Any]]:
        """Capture and reduce: return (tables, summary, data_record for the digest)."""
