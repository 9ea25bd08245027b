"""The time estimate `posbench report` prints before it runs anything: which runs are reused,
which will run and about how long, from earlier runs in the store or from a calibration of this
model times the run's planned tokens (posbench.estimate). The report's own lines are tested in
test_report.py (test_first_report_estimates_time_then_reuses)."""

from posbench.estimate import Estimate, calibrate, describe, estimate, format_seconds
from posbench.interventions.pine import Pine
from posbench.interventions.positions import PositionShift
from posbench.probes.position_bias import PositionBiasProbe
from posbench.probes.sinks import SinkProbe


def test_estimate_prefers_an_earlier_run_then_learned_cost_then_the_measured_factor():
    probe = SinkProbe()
    config = probe.get_params()
    same = [("m", config, {"seconds": 30.0}), ("m", config, {"seconds": 50.0}), ("m", {**config, "seed": 9}, {"seconds": 999.0})]
    e = estimate(probe, "sinks", "m", same, seconds_per_token=1e-3, planned_tokens=1000)
    assert (e.seconds, e.low, e.high) == (40.0, 28.0, 60.0) and "earlier run" in e.basis, "median of the same config"
    # another model's run that recorded its calibration: its cost per token, scaled to this model
    other = [("other", config, {"seconds": 20.0, "estimate": {"seconds_per_token": 2e-3, "planned_tokens": 2000}})]
    e = estimate(probe, "sinks", "m", other, seconds_per_token=1e-3, planned_tokens=3000)
    assert abs(e.seconds - 5.0 * 1e-3 * 3000) < 1e-9 and "1 earlier run" in e.basis  # factor 20 / (2e-3 x 2000) = 5
    e = estimate(probe, "sinks", "m", [], seconds_per_token=1e-3, planned_tokens=3000)
    assert abs(e.seconds - SinkProbe.work_factor * 3.0) < 1e-9 and "embedded models" in e.basis
    assert estimate(probe, "sinks", "m", [], 1e-3, None).seconds is None


def test_describe_says_what_is_reused_and_what_runs():
    lines = describe("m", ["sinks"], [Estimate("rope-usage", 150.0, 75.0, 300.0, "basis"),
                                      Estimate("patching", None, None, None, "no estimate")])
    assert lines[0] == "m: reusing 1 stored run(s): sinks"
    assert lines[1] == "m: 2 run(s) not in the store will run, about 2 min (75 s to 5 min) on this machine plus 1 without an estimate:"
    assert describe("m", ["sinks"], [])[-1] == "m: nothing to run, every probe is in the store"
    assert [format_seconds(s) for s in (0.2, 89, 91, 5399, 7200)] == ["1 s", "89 s", "2 min", "90 min", "2.0 h"]


def test_calibration_and_planned_tokens(tiny_llama):
    assert 0 < calibrate(tiny_llama) < 1
    probe = PositionBiasProbe(task="mcq", n_items=2)
    plain = probe.planned_tokens(tiny_llama)
    with tiny_llama.intervene(Pine()):
        pined = probe.planned_tokens(tiny_llama)
    with tiny_llama.intervene(PositionShift(5)):
        shifted = probe.planned_tokens(tiny_llama)
    assert 0 < plain == pined < shifted, "PINE keeps packed rows; an intervention that does not: more rows to score"
    assert SinkProbe(n_sequences=2, seq_len=16).planned_tokens(tiny_llama) == 2 * 16
