"""Every registered probe, intervention, view and dataset against the shared protocols
(scikit-learn's check_estimator in spirit): a new one inherits these checks."""

import dataclasses
import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from posbench import options
from posbench.cli import main
from posbench.registry import datasets, interventions, probes, views
from posbench.render import render, to_html
from posbench.store import Store

ROOT = Path(__file__).resolve().parent.parent
SMALL = {  # the smallest settings each probe accepts, so the conformance run takes seconds
    "sinks": dict(n_sequences=2, seq_len=16),
    "positional-heads": dict(n_random=2, n_natural=2, n_repeated=1, seq_len=16, repeat_len=4),
    "rope-usage": dict(n_sequences=2, seq_len=16),
    "patching": dict(n_pairs=2, sites=("z",)),
    "refusal": dict(n_train=2, n_val=2, n_generate=1, max_new_tokens=2, causal_heads=1, n_boot=10),
}


def small(name):
    return SMALL.get(name, {})


@pytest.mark.parametrize("name", sorted(probes()))
def test_probe_run_store_load_render(name, tiny_llama, tmp_path):
    probe_cls = probes()[name]
    assert probe_cls.not_applicable(tiny_llama) is None
    result = probe_cls(**small(name)).run(tiny_llama)
    assert result.tables and all(len(t) for t in result.tables.values())
    store = Store(tmp_path / "r.sqlite")
    run_id = store.save(result)
    loaded = store.load(run_id)
    assert loaded.config == result.config and loaded.summary == json.loads(json.dumps(result.summary, default=str))
    for table in result.tables:
        assert loaded.tables[table].shape == result.tables[table].shape
    assert set(loaded.figures) == set(result.figures)  # figures are rebuilt from stored tables alone
    page = to_html(render(loaded))
    assert result.title() in page
    assert name in views(), f"probe '{name}' has no view beside it"


@pytest.mark.parametrize("name", sorted(probes()))
def test_every_config_field_parses_from_the_command_line(name):
    probe_cls = probes()[name]
    for spec in options.specs(probe_cls.Config).values():
        value = spec.default
        text = ",".join(map(str, value)) if spec.is_tuple else str(value)
        parsed = options.coerce(probe_cls.Config, spec.name, text)
        assert parsed == (tuple(value) if spec.is_tuple else value), spec.name
    assert probe_cls().get_params() == json.loads(json.dumps(dataclasses.asdict(probe_cls.Config()), default=str))


@pytest.mark.parametrize("name", sorted(interventions()))
def test_interventions_declare_a_kind_and_a_spec(name):
    cls = interventions()[name]
    assert cls.kind in ("input", "activation", "attention") and cls.summary and cls.spec_help


def test_report_covers_every_reported_probe(tmp_path):
    store = tmp_path / "r.sqlite"
    out = tmp_path / "report"
    assert main(["report", "--model", "tiny-llama", "--store", str(store), "--out", str(out), "-q", "--no-showcase"]) == 0
    machine = json.loads((out / "results.json").read_text())
    reported = {n for n, c in probes().items() if c.reported}
    assert set(machine["probes"]) == reported


def test_registry_finds_every_module_and_packaging_lists_every_package():
    """Probes may be packages: every sub-package is found by the registry and installed."""
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for folder, prefix in ((ROOT / "probes", "posbench.probes"), (ROOT / "posbench", "posbench")):
        for info in pkgutil.walk_packages([str(folder)], prefix=prefix + "."):
            if info.ispkg and not info.name.rsplit(".", 1)[-1].startswith("_"):
                assert info.name in declared, f"{info.name} is missing from pyproject.toml packages"
    assert {"sinks", "positional-heads", "rope-usage"} <= set(probes())
    assert "texts" in datasets()


def test_no_import_cycle_between_model_protocols_and_registry():
    for first in ("posbench.registry", "posbench.protocols", "posbench.model", "posbench.sites", "posbench.backends"):
        code = f"import {first}; import posbench.model, posbench.protocols, posbench.registry"
        subprocess.run([sys.executable, "-c", code], check=True)


def test_only_the_backend_knows_hook_names():
    """No TransformerLens hook-name string outside posbench/backends (the seam of issue 7)."""
    offenders = []
    for path in list((ROOT / "posbench").rglob("*.py")) + list((ROOT / "probes").rglob("*.py")) + list((ROOT / "app").rglob("*.py")):
        if "backends" in path.parts:
            continue
        text = path.read_text()
        for needle in ("hook_pattern", "hook_rot_", "hook_cos", "hook_sin", "unembed.hook_in", "hook_attn_scores", ".hook_out", "hook_z"):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders
