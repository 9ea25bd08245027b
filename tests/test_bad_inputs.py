"""Every bad input gets one clean line and exit 2, before any model loads when it can, and the
store stays untouched. The table grows by itself: every registered probe's options and every
registered intervention's spec are tried with bad values (new probes and interventions inherit
these tests), and the option and spec parsers are checked with hypothesis."""

import hashlib
import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posbench import options
from posbench.cli import main
from posbench.errors import BadOptionError, MalformedDataError, PosbenchError, PosbenchWarning, ResourceLimitError
from posbench.interventions.rope_bands import RopeBandZero
from posbench.limits import COUNT_CEILINGS, MAX_INDEX
from posbench.probes.positional_heads import PositionalHeadsProbe
from posbench.probes.sinks import SinkProbe
from posbench.protocols import Intervention, ProbeResult
from posbench.registry import interventions, probes
from posbench.store import Store

NO_MODEL = "no-such-model"  # a case that fails with its own message proves it failed before loading


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-inputs") / "results.sqlite"
    Store(path).save(ProbeResult(probe="sinks", model_id="m", config={}, tables={"t": pd.DataFrame({"x": [1]})},
                                 summary={"x": 1}, model_card={}, metadata={"started_at": "2026-01-01"}))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    made = {
        "binary": b"\x00\x01\x02binary\xff",
        "latin1": "café au lait\n".encode("latin-1"),
        "utf16": "hello world\n".encode("utf-16"),
        "empty": b"\n\n",
        "long": ("word " * 700).encode(),
        "malformed": b'{"text": "fine"}\n{"text": broken\n',
        "notext": b'{"body": "x"}\n',
        "surrogate": b'{"text": "a \\ud800 b"}\n',
        "afile": b"x",
    }
    paths = {}
    for name, raw in made.items():
        suffix = ".jsonl" if name in ("malformed", "notext", "surrogate") else ".txt"
        paths[name] = d / f"{name}{suffix}"
        paths[name].write_bytes(raw)
    (d / "folder").mkdir()
    (d / "notackpt").mkdir()
    paths.update(folder=d / "folder", notackpt=d / "notackpt", missing=d / "missing" / "x", bundle=paths["afile"])
    return {k: str(v) for k, v in paths.items()}


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run_cli(argv, store, capsys):
    """Run the CLI; return (exit code, stderr) and check the store was not touched."""
    before = _digest(store)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert _digest(store) == before, "a bad input must leave the store untouched"
    return code, err


def assert_clean(code, err, message, before_load=False):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err and lines and lines[-1].startswith("posbench: error: "), err
    assert message in lines[-1], lines[-1]
    if before_load:
        assert "unknown model" not in lines[-1], "must fail before the model loads"


M = NO_MODEL
CASES = [  # (argv, message); "{name}" is a file from the `files` fixture; store appended where it applies
    # interventions: empty, reversed, out-of-bounds and malformed specs fail before the model loads
    (["run", "sinks", "-m", M, "-i", "rope-zero-band:pairs="], "bad option pairs='' for intervention 'rope-zero-band': give at least one value"),
    (["run", "sinks", "-m", M, "-i", "rope-zero-band:pairs=5-2"], "range 5-2 runs backwards"),
    (["run", "sinks", "-m", M, "-i", "rope-zero-band:pairs=0;layers="], "bad option layers=''"),
    (["run", "sinks", "-m", M, "-i", "rope-zero-band:pairs=0;heads="], "bad option heads=''"),
    (["run", "sinks", "-m", M, "-i", "rope-zero-band:pairs=0-99999999"], "99999999 is above 4095"),
    (["run", "sinks", "-m", M, "-i", "rope-zero-band:pairs=1;pairs=2"], "option 'pairs' is given twice"),
    (["run", "sinks", "-m", M, "-i", "rope-zero-band:target=x;pairs=1"], "bad option target='x'"),
    (["run", "sinks", "-m", M, "-i", "rope-position-free:abc"], "bad option fraction='abc'"),
    (["run", "sinks", "-m", M, "-i", "rope-position-free:0"], "the fraction must be above 0"),
    (["run", "sinks", "-m", M, "-i", "rope-position-free:0.5,hihgest"], "malformed RoPE band '0.5,hihgest'"),
    (["run", "sinks", "-m", M, "-i", "rope-position-free:"], "no band was given"),
    (["run", "sinks", "-m", M, "-i", "rope-position-free:heads=1;pairs=0"], "unknown option 'heads'"),
    (["run", "sinks", "-m", M, "-i", "ablate-heads:"], "give at least one value"),
    (["run", "sinks", "-m", M, "-i", "ablate-heads:7"], "malformed head '7'"),
    (["run", "sinks", "-m", M, "-i", "ablate-head:1.1"], "Did you mean 'ablate-heads'"),
    # options and sizes: bounded before any allocation
    (["run", "rope-usage", "-m", M, "-o", "band_fractions=abc"], "bad option band_fractions='abc'"),
    (["run", "sinks", "-m", M, "-o", "inputs="], "bad option inputs='' for probe 'sinks': give at least one value"),
    (["run", "sinks", "-m", M, "-o", "seq_len=abc"], "bad option seq_len='abc' for probe 'sinks': expected integer"),
    (["run", "sinks", "-m", M, "-o", "nope=1"], "unknown option 'nope'"),
    (["run", "sinks", "-m", M, "-o", "epsilon"], "write KEY=VALUE"),
    (["run", "sinks", "-m", M, "--n", "100000"], "--n 100000: bad option n_sequences=100000"),
    (["run", "sinks", "-m", M, "--n", "0"], "--n 0: bad option n_sequences=0"),
    (["run", "sinks", "-m", M, "--n", "abc"], "argument --n: invalid int value"),
    (["run", "sinks", "-m", M, "--seq-len", "10000000", "-o", "inputs=random"], "--seq-len 10000000: bad option seq_len"),
    (["run", "sinks", "-m", M, "--n", "10000", "--seq-len", "100000"], "of token storage) but 8.0 GiB of memory is available"),
    (["run", "positional-heads", "-m", M, "-o", "n_random=3"], "n_random must be an even number"),
    (["run", "sinkz", "-m", M], "unknown probe 'sinkz'"),
    (["run", "sinks", "-m", M, "-m", "tiny-llama"], "--model given twice"),
    # data files: refused up front with the fix
    (["run", "sinks", "-m", M, "--data", "{binary}"], "looks binary (or UTF-16)"),
    (["run", "sinks", "-m", M, "--data", "{latin1}"], "not UTF-8 (byte 0xe9)"),
    (["run", "sinks", "-m", M, "--data", "{utf16}"], "looks binary (or UTF-16)"),
    (["run", "sinks", "-m", M, "--data", "{surrogate}"], "lone surrogate"),
    (["run", "sinks", "-m", M, "--data", "{folder}"], "is a folder: pass a .jsonl (or .txt) file inside it"),
    (["run", "sinks", "-m", M, "--data", "/dev/null"], "not a regular file"),
    (["run", "sinks", "-m", M, "--data", "{empty}"], "holds no texts"),
    (["run", "sinks", "-m", M, "--data", "{malformed}"], "malformed.jsonl:2: not valid JSON"),
    (["run", "sinks", "-m", M, "--data", "{notext}"], 'missing field "text"'),
    (["run", "sinks", "-m", M, "--data", "natural,images"], "'images' is not one of them"),
    (["run", "positional-heads", "-m", M, "--data", "natural"], "probe 'positional-heads' takes a .txt"),
    # output paths: checked before the probes run
    (["run", "sinks", "-m", M, "--json", "{missing}"], "does not exist; create it or pass another path"),
    (["run", "sinks", "-m", M, "--json", "{folder}"], "is a folder: pass a file path"),
    (["report", "-m", M, "--out", "{afile}"], "is a file, not a folder"),
    (["report", "-m", M, "--out", "{afile}/sub"], "is a file; pass another folder"),
    (["report", "-m", M, "-i", "no-such-thing:1"], "no-such-thing"),
    (["import", "{afile}"], "not a posbench result bundle"),
    (["dashboard", "--port", "0"], "port 0 is not in 1-65535"),
    # after the model loads, before any input is built
    (["run", "sinks", "-m", "{notackpt}"], "is not a HuggingFace checkpoint (it has no config.json)"),
    (["run", "sinks", "-m", "tiny-llama", "--data", "{long}", "--seq-len", "5000"], "tiny-llama's context is 512"),
    (["run", "rope-usage", "-m", "tiny-gpt2"], "rope-usage needs a RoPE model"),
    (["run", "sinks", "-m", "tiny-llama", "-i", "ablate-heads:1.9"], "head 9 out of range"),
    (["run", "rope-usage", "-m", "tiny-llama", "-i", "rope-zero-band:pairs=9"], "rotary pair out of range"),
    (["report", "-m", "tiny-llama", "-i", "ablate-heads:1.9"], "head 9 out of range"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[:2] + a[3:])[:60] for a, _ in CASES])
def test_bad_input_one_line_error_store_untouched(argv, message, store, files, capsys, monkeypatch):
    monkeypatch.setenv("POSBENCH_MEMORY_LIMIT", "8G")  # the same answer on every machine
    argv = [a.format(**files) for a in argv]
    if argv[0] in ("run", "report", "import"):
        argv += ["--store", str(store)]
    if argv[0] in ("run", "report"):
        argv += ["-q"]
    code, err = run_cli(argv, store, capsys)
    assert_clean(code, err, message, before_load=NO_MODEL in argv)


@pytest.mark.parametrize("target", ["/proc/self/status", "/dev/null", "{folder}", "{afile}/r.sqlite"])
def test_unusable_stores_are_refused_before_running(target, files, capsys):
    target = target.format(**files)
    capsys.readouterr()
    assert main(["run", "sinks", "-m", NO_MODEL, "--store", target, "-q"]) == 2
    err = capsys.readouterr().err
    assert_clean(2, err, "--store", before_load=True)


def test_memory_estimate_refuses_a_run_that_cannot_fit(tiny_llama, monkeypatch):
    monkeypatch.setenv("POSBENCH_MEMORY_LIMIT", "100K")
    with pytest.raises(ResourceLimitError, match=r"needs about .* at its peak .* but 100 KiB is free"):
        SinkProbe(n_sequences=2, seq_len=64).run(tiny_llama)
    monkeypatch.setenv("POSBENCH_MEMORY_LIMIT", "lots")
    with pytest.raises(ResourceLimitError, match="is not a size"):
        SinkProbe(n_sequences=1).run(tiny_llama)


# ----------------------------------------------------------------------------- the Python API
def test_api_bad_values_raise_posbench_errors(tiny_llama):
    with pytest.raises(BadOptionError, match="bad option seq_len='abc' for probe 'sinks'"):
        SinkProbe(seq_len="abc")
    with pytest.raises(BadOptionError, match="give at least one value"):
        RopeBandZero(pairs=[])
    with pytest.raises(BadOptionError, match="unknown option"):
        SinkProbe(nope=1)
    with pytest.raises(MalformedDataError, match='"text" is empty'):
        PositionalHeadsProbe(n_random=2, n_natural=1, n_repeated=1).run(tiny_llama, data=[""])
    with pytest.raises(PosbenchError, match="holds no rows"):
        SinkProbe(n_sequences=1).run(tiny_llama, data=[])


def test_user_texts_are_measured_as_given_and_said_when_cut(tiny_llama):
    with pytest.warns(PosbenchWarning, match=r"1 of 1 texts are longer than seq_len=8 tokens .* were cut to 8"):
        result = SinkProbe(seq_len=8, first_token_test=False).run(tiny_llama, data=["a text of more than eight tokens"])
    assert "inputs" not in result.config and "n_sequences" not in result.config, "config says what ran"
    assert set(result.tables["head_mass"]["input"]) == {"custom"}


def test_a_text_of_exactly_the_context_length_runs(tiny_llama):
    text = "x" * (tiny_llama.card.context_length - 1)  # + BOS = the context
    result = SinkProbe(seq_len=tiny_llama.card.context_length).run(tiny_llama, data=[text])
    assert result.metadata["data"]["kinds"] == {"custom": 1}


def test_one_token_text_warns_that_its_sink_rate_means_nothing(tiny_gpt2):
    with pytest.warns(PosbenchWarning, match="single token"):
        SinkProbe(first_token_test=False).run(tiny_gpt2, data=["a"])


# ----------------------------------------------------------------------------- from the registry
def _bad_values(spec: options.OptionSpec) -> list:
    """Values every option of this type must refuse."""
    bad = []
    if spec.kind in (int, float):
        bad.append("abc")
        step = 1 if spec.kind is int else 0.5
        if spec.min is not None:
            bad.append(str(spec.kind(spec.min - step)))
        if spec.max is not None:
            bad.append(str(spec.kind(spec.max + step)))
    elif spec.kind is bool:
        bad.append("maybe")
    if spec.choices:
        bad.append("not-a-choice")
    if spec.is_tuple and spec.nonempty:
        bad.append("")
    return bad


PROBE_OPTIONS = [(name, spec) for name, cls in probes().items() for spec in options.specs(cls.Config).values()]


@pytest.mark.parametrize("probe,spec", PROBE_OPTIONS, ids=[f"{p}.{s.name}" for p, s in PROBE_OPTIONS])
def test_every_probe_option_refuses_bad_values(probe, spec, store, capsys):
    cls = probes()[probe]
    for value in _bad_values(spec):
        with pytest.raises(BadOptionError, match=f"bad option {spec.name}="):
            cls(**{spec.name: value})
        code, err = run_cli(["run", probe, "-m", NO_MODEL, "-o", f"{spec.name}={value}", "--store", str(store)],
                            store, capsys)
        assert_clean(code, err, f"bad option {spec.name}=", before_load=True)
    if spec.counts:  # everything that sizes a run is bounded
        assert spec.max is not None and spec.max <= COUNT_CEILINGS[spec.counts]


HOSTILE_SPECS = ["", ";", "=", "=1", ";;x", "@@@", "1-0", "a=b=c", "bogus_key=1", "0.5;0.5", "pairs=0-99999999",
                 "heads=1.1.1", "1e999", "-1", "nan", "pairs=1,,2", "\x00", "layers=-3-2", "x" * 500]


@pytest.mark.parametrize("name", sorted(interventions()))
def test_every_intervention_refuses_malformed_specs(name, store, capsys):
    cls = interventions()[name]
    for text in HOSTILE_SPECS:
        try:
            built = cls.from_spec(text)
        except PosbenchError as err:
            assert "\n" not in str(err)
        else:
            assert isinstance(built, Intervention) and text not in ("bogus_key=1", "@@@", "="), text
    code, err = run_cli(["run", "sinks", "-m", NO_MODEL, "-i", f"{name}:bogus_key=1", "--store", str(store)],
                        store, capsys)
    assert_clean(code, err, name, before_load=True)


# ----------------------------------------------------------------------------- properties of the parsers
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(text=st.text(max_size=40))
def test_any_spec_text_builds_an_intervention_or_a_clean_error(text):
    for cls in interventions().values():
        try:
            assert isinstance(cls.from_spec(text), Intervention)
        except PosbenchError:
            pass


@PROPERTY
@given(text=st.text(max_size=30))
def test_any_option_text_is_coerced_or_refused_cleanly(text):
    for cls in probes().values():
        for name in options.specs(cls.Config):
            try:
                options.coerce(cls.Config, name, text)
            except BadOptionError:
                pass


@PROPERTY
@given(values=st.lists(st.integers(0, MAX_INDEX), max_size=20))
def test_index_lists_round_trip(values):
    assert options.coerce(RopeBandZero.Config, "pairs", ",".join(map(str, values)) or "none") == (tuple(values) or None)


@PROPERTY
@given(lo=st.integers(-5, MAX_INDEX + 5), hi=st.integers(-5, MAX_INDEX + 5))
def test_ranges_expand_only_within_bounds_and_forwards(lo, hi):
    spec_ok = 0 <= lo <= hi <= MAX_INDEX
    try:
        got = options.coerce(RopeBandZero.Config, "layers", f"{lo}-{hi}")
    except BadOptionError as err:
        assert not spec_ok and ("runs backwards" in str(err) or "is below" in str(err) or "is above" in str(err))
    else:
        assert spec_ok and got == tuple(range(lo, hi + 1))


@PROPERTY
@given(value=st.integers(-(10**12), 10**12))
def test_integer_options_accept_exactly_their_bounds(value):
    spec = options.specs(SinkProbe.Config)["seq_len"]
    inside = spec.min <= value <= spec.max
    for given_value in (value, str(value)):
        try:
            assert options.coerce(SinkProbe.Config, "seq_len", given_value) == value and inside
        except BadOptionError:
            assert not inside


@PROPERTY
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_float_options_accept_exactly_their_bounds(value):
    spec = options.specs(SinkProbe.Config)["epsilon"]
    inside = not math.isnan(value) and spec.min <= value <= spec.max
    try:
        assert options.coerce(SinkProbe.Config, "epsilon", repr(value)) == value and inside
    except BadOptionError:
        assert not inside


@PROPERTY
@given(parts=st.dictionaries(st.sampled_from(["pairs", "layers", "heads", "target"]),
                             st.text(alphabet="0123456789-,qk ", max_size=12), max_size=4))
def test_spec_pairs_parse_like_their_options(parts):
    """key=value;... gives exactly what coercing each value alone gives (or the same refusal)."""
    text = ";".join(f"{k}={v}" for k, v in parts.items())
    try:
        expected = {k: options.coerce(RopeBandZero.Config, k, v, "x") for k, v in parts.items()}
    except BadOptionError:
        with pytest.raises(BadOptionError):
            options.parse_spec(RopeBandZero.Config, text, "x")
    else:
        assert options.parse_spec(RopeBandZero.Config, text, "x") == expected
