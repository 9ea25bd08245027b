"""Reports: findings in numbers, human metric names, several models with a comparison index,
interventions side by side, suites, reuse of stored runs, machine-readable results, determinism,
and the pages opened in a real headless Chromium with no network."""

import contextlib
import io
import json
import re
import shutil

import pandas as pd
import pytest

from posbench.cli import main
from posbench.store import Store


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """One report run over two tiny models (a RoPE Llama and a GPT-2 without RoPE) with one
    intervention, stored runs in a fresh store."""
    root = tmp_path_factory.mktemp("reports")
    store = root / "results.sqlite"
    argv = ["report", "--models", "tiny-llama,tiny-gpt2", "-i", "ablate-heads:1.0", "--store", str(store),
            "--out", str(root / "out"), "--no-showcase"]
    said = io.StringIO()
    with contextlib.redirect_stderr(said):  # not quiet: the time estimate is printed (test_first_report_estimates_time)
        assert main(argv) == 0
    return root / "out", store, [*argv, "-q"], said.getvalue()


def test_index_links_every_model_report_and_compares_them(two_models):
    out, _, _, _ = two_models
    index = (out / "index.html").read_text()
    links = re.findall(r'<a class="model-report" href="([^"]+)">([^<]+)</a>', index)
    assert [name for _, name in links] == ["tiny-llama", "tiny-gpt2"]
    for href, _ in links:
        assert (out / href).is_file() and (out / href).name == "index.html"
    assert 'data-figure="sink_rate_by_depth"' in index and 'data-figure="head_classes_by_model"' in index
    # rope-usage exists for one model only: its findings are listed, but no comparison figure is drawn
    assert 'id="rope-usage"' in index and "rope_band_shares" not in index
    assert index.count('<script type="text/javascript">/**') == 1, "plotly.js once"
    machine = json.loads((out / "results.json").read_text())
    assert set(machine["models"]) == {"tiny-llama", "tiny-gpt2"}


def test_model_report_states_findings_names_metrics_and_shows_interventions(two_models):
    out, store, _, _ = two_models
    page = (out / "tiny-llama" / "index.html").read_text()
    machine = json.loads((out / "tiny-llama" / "results.json").read_text())
    sinks = machine["probes"]["sinks"]
    # the finding's numbers are the result's numbers
    rate = sinks["summary"]["sink_rate_natural_pct"]
    assert f"{rate:.1f}%" in " ".join(sinks["finding"]["sentences"])
    assert sinks["finding"]["published"].startswith("Gu et al. 2025")
    assert sinks["finding"]["verdict"].split(":")[0] in ("Agrees", "Differs", "Partly agrees")
    assert page.index('class="finding"') < page.index('class="dataframe summary"'), "the finding comes first"
    assert "sink rate, natural input (% of heads" in page and "sink_rate_natural_pct</td>" not in page
    # interventions side by side, from the stored runs
    assert 'id="interventions"' in page
    section = page.split('id="interventions"')[1]
    assert "no intervention" in section and "ablate-heads(heads=[&#x27;1.0&#x27;],mode=zero)" in section
    under = {iv["probe"] for iv in machine["interventions"]}
    assert under == {"sinks", "positional-heads", "rope-usage", "position-bias"}
    assert all(iv["interventions"][0]["name"] == "ablate-heads" for iv in machine["interventions"])
    # machine-readable tables: CSV and Parquet hold the same table
    csv = out / "tiny-llama" / sinks["tables"]["layer_sink_rate"]
    pd.testing.assert_frame_equal(pd.read_csv(csv), pd.read_parquet(csv.with_suffix(".parquet")), check_dtype=False)
    assert len(Store(store).runs()) == 4 * 2 + 3 * 2, "plain + ablated runs of 4 probes (llama) and 3 (gpt2)"


def test_report_shows_every_intervention_through_its_probe(tmp_path, monkeypatch):
    """Without --intervention, each registered intervention is run through the probe it declares
    (or listed with why not); on a RoPE model, positions shifted by 1000 leave the sinks as they were."""
    from posbench.registry import interventions

    store, out = tmp_path / "results.sqlite", tmp_path / "out"
    assert main(["report", "-m", "tiny-llama", "--store", str(store), "--out", str(out), "-q"]) == 0
    machine = json.loads((out / "results.json").read_text())
    shown = {iv["interventions"][0]["name"]: iv for iv in machine["interventions"]}
    assert set(shown) | set(machine["interventions_not_shown"]) == set(interventions())
    assert not set(shown) & set(machine["interventions_not_shown"])
    for name, run in shown.items():
        assert run["probe"] == interventions()[name].showcase[0]
    assert {"pine", "position-shift", "ablate-heads", "rope-position-free"} <= set(shown)
    assert "refusal" in machine["interventions_not_shown"]["ablate-direction"]
    assert "--suite full" in machine["interventions_not_shown"]["shared-positions"], "costly: full suite only"
    plain, shifted = machine["probes"]["sinks"]["summary"], shown["position-shift"]["summary"]
    assert shifted["sink_rate_natural_pct"] == pytest.approx(plain["sink_rate_natural_pct"], abs=1e-6)
    assert shifted["mean_first_mass_natural_layers2+"] == pytest.approx(plain["mean_first_mass_natural_layers2+"], abs=1e-4)
    page = (out / "index.html").read_text().split('id="interventions"')[1]
    assert "position-shift(offset=1000)" in page and "Not shown here" in page
    # a second report reuses every stored run and loads no model
    n = len(Store(store).runs())
    with monkeypatch.context() as patch:
        patch.setattr("posbench.model.load_model", lambda *a, **k: pytest.fail("every run is stored: no model load"))
        assert main(["report", "-m", "tiny-llama", "--store", str(store), "--out", str(tmp_path / "again"), "-q"]) == 0
    assert len(Store(store).runs()) == n


def test_second_report_reuses_stored_runs_and_rerun_runs_again(two_models, monkeypatch, capsys):
    out, store, argv, _ = two_models
    n = len(Store(store).runs())
    assert main(argv) == 0
    assert len(Store(store).runs()) == n, "every run was reused"
    assert "reusing" not in capsys.readouterr().err, "-q: no plan, no estimate"

    def no_load(*args, **kwargs):
        raise AssertionError("every run is stored: the model must not be loaded")

    with monkeypatch.context() as patch:
        patch.setattr("posbench.model.load_model", no_load)
        assert main(["report", "-m", "tiny-gpt2", "--store", str(store), "--out", str(out / "fast"), "-q",
                     "--no-showcase"]) == 0
    assert "sink rate, natural input" in (out / "fast" / "index.html").read_text()
    capsys.readouterr()
    assert main(["report", "-m", "tiny-gpt2", "--store", str(store), "--out", str(out / "again"), "--rerun",
                 "--no-showcase"]) == 0
    assert len(Store(store).runs()) == n + 3, "--rerun runs the suite again (3 probes apply to gpt2)"
    err = capsys.readouterr().err
    assert "tiny-gpt2: 3 run(s) not in the store will run" in err
    assert re.search(r"^posbench:   sinks: about \d+ s \(\d+-\d+ s\); an earlier run of it on this model took", err, re.M)


def test_first_report_estimates_time_then_reuses(two_models, capsys):
    """Before running anything a report says which runs it reuses and which it runs, about how
    long each takes (a positive number, a range), and records what the estimate used."""
    out, store, argv, said = two_models
    head = next(line for line in said.splitlines() if line.startswith("posbench: tiny-llama: ") and "will run" in line)
    total = re.search(r"8 run\(s\) not in the store will run, about (\d+) (s|min) \((\d+)(-| s to )(\d+) (s|min)\)", head)
    assert total and int(total.group(1)) > 0, head
    for label in ("sinks", "positional-heads", "rope-usage", "position-bias", "sinks under ablate-heads"):
        assert re.search(rf"^posbench:   {label}: about \d+ (s|min) \(", said, re.M), label
    recorded = [Store(store).load(r).metadata["estimate"] for r in Store(store).runs().run_id]
    assert all(e["seconds_per_token"] > 0 and e["planned_tokens"] > 0 for e in recorded), "kept for later estimates"
    capsys.readouterr()
    assert main([a for a in argv if a != "-q"]) == 0
    err = capsys.readouterr().err
    reused = next(line for line in err.splitlines() if "tiny-llama: reusing" in line)
    assert "reusing 8 stored run(s): position-bias, position-bias under ablate-heads, " in reused and "sinks" in reused
    assert "tiny-gpt2: nothing to run, every probe is in the store" in err and "will run" not in err


def test_full_suite_adds_the_probes_left_out_of_standard(tmp_path):
    from posbench.registry import probes
    from posbench.report import in_suite

    standard = {n for n, c in probes().items() if in_suite(c, "standard")}
    full = {n for n, c in probes().items() if in_suite(c, "full")}
    assert standard < full and "patching" in full - standard
    assert main(["report", "--suite", "nope", "-m", "tiny-llama"]) == 2


def test_same_seed_gives_the_same_tables(tiny_llama):
    from posbench.probes.positional_heads import PositionalHeadsProbe
    from posbench.probes.sinks import SinkProbe

    for probe in (SinkProbe(n_sequences=2, seq_len=24, seed=3), PositionalHeadsProbe(n_random=2, n_natural=2, seq_len=24, seed=3)):
        a, b = probe.run(tiny_llama), probe.run(tiny_llama)
        assert a.data_digest == b.data_digest and a.summary == b.summary
        for name in a.tables:
            pd.testing.assert_frame_equal(a.tables[name], b.tables[name])


def test_finding_counts_a_planted_sink_head():
    """One head of tiny-llama's 2 x 4 planted to attend to the first token: the finding's sink
    rate is 1/8 of heads x sequences (12.5%), and it says the model differs from Gu et al.
    (fewer than half the heads sink)."""
    import posbench
    from posbench.planted import plant_first_token_head
    from posbench.probes.sinks import SinkProbe

    model = posbench.load_model("tiny-llama")
    plant_first_token_head(model, head=2)
    finding = SinkProbe(n_sequences=2, seq_len=24, inputs=("random",), first_token_test=False).run(model).finding()
    assert "12.5% on random input" in finding.sentences[0], finding.text()
    assert finding.verdict.startswith("Differs: fewer than half the heads sink")


@pytest.mark.embedded
def test_findings_agree_with_the_published_sink_result(embedded):
    """Gu et al.: most heads past the first layers sink on the first token (README: 71-79% on
    SmolLM2 and Gemma with 16 x 64 tokens); a short run already agrees."""
    from posbench.probes.sinks import SinkProbe

    finding = SinkProbe(n_sequences=2, seq_len=32, inputs=("natural",), first_token_test=False).run(embedded).finding()
    assert finding.verdict.startswith("Agrees"), finding.text()


# ---------------------------------------------------------------------------- in a browser
def _offline_chromium():
    from selenium import webdriver

    from conftest import pytest_setup_options

    options = pytest_setup_options()
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND")  # no name resolves: no network
    options.add_argument("--proxy-server=http://127.0.0.1:9")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options)


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs Debian's chromium-driver")
def test_reports_render_every_figure_offline_without_console_errors(two_models):
    from selenium.webdriver.support.ui import WebDriverWait

    out, _, _, _ = two_models
    driver = _offline_chromium()
    try:
        for page in (out / "index.html", out / "tiny-llama" / "index.html", out / "tiny-gpt2" / "index.html"):
            driver.get(page.as_uri())
            n = driver.execute_script("return document.querySelectorAll('div.figure').length")
            assert n >= 2
            WebDriverWait(driver, 30).until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('div.figure')].every(f => f.querySelector('.main-svg'))"))
            errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert errors == [], (page, errors)
    finally:
        driver.quit()


def test_compare_in_the_api(tiny_llama, tiny_neox):
    """`posbench.compare` puts one probe's results on several models side by side (callable
    again: the function is not shadowed by a module of the same name)."""
    import posbench

    a = posbench.run("sinks", tiny_llama, n_sequences=1, seq_len=12, progress=False)
    b = posbench.run("sinks", tiny_neox, n_sequences=1, seq_len=12, progress=False)
    first, second = posbench.compare(a, b), posbench.compare(b, a)
    assert list(first.findings().model) == ["tiny-llama", "tiny-neox"] and list(second.findings().model) == ["tiny-neox", "tiny-llama"]
    assert set(first.figures) == {"sink_rate_by_depth"} and "Gu et al. 2025" in first._repr_html_()
    with pytest.raises(ValueError, match="one probe at a time"):
        posbench.compare(a, posbench.run("positional-heads", tiny_llama, n_random=2, n_natural=1, seq_len=12, progress=False))
