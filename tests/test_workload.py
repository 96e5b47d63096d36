"""Workload generation: the arrival processes and length distributions are what they claim to be,
each attribute has its own random stream, and trace replay round-trips and fails clearly.

Statistical checks use pinned seeds, so they are deterministic; tolerances are several standard
errors wide so that a different (correct) seed would pass too, yet a wrong rate, shape or
phase would not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from testbed.rng import RandomStreams
from testbed.spec import SpecError, WorkloadSpec
from testbed.workload import Arrivals, generate, mean_rate

REGIONS = ["aws/us-east-1", "gcp/europe-west4"]
EXAMPLE_TRACE = Path(__file__).resolve().parents[1] / "faults" / "traces" / "example.csv"


def workload(arrival: dict[str, Any], **fields: Any) -> WorkloadSpec:
    return WorkloadSpec.model_validate({"arrival": arrival, **fields})


def run(spec: WorkloadSpec, duration: float, seed: int = 1, **kwargs: Any) -> Arrivals:
    return generate(spec, duration, REGIONS, RandomStreams(seed), **kwargs)


def shares(codes: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(codes, minlength=n) / len(codes)


# --------------------------------------------------------------------------- arrival processes


def test_poisson_count_and_exponential_gaps() -> None:
    rate, duration = 200.0, 500.0
    times = run(workload({"kind": "poisson", "rate": rate}), duration).time
    expected = rate * duration
    assert abs(len(times) - expected) < 4 * np.sqrt(expected)
    assert stats.kstest(np.diff(times), stats.expon(scale=1 / rate).cdf).pvalue > 0.001


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_gaps_have_requested_mean_and_cv(cv: float) -> None:
    rate = 100.0
    gaps = np.diff(run(workload({"kind": "gamma", "rate": rate, "cv": cv}), 2000.0).time)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    # Quantiles rather than a KS test: at cv=3 a few percent of gaps are below a picosecond,
    # where differences of float64 times (rightly) no longer resolve them.
    probabilities = [0.25, 0.5, 0.75, 0.9, 0.99]
    expected = stats.gamma(a=1 / cv**2, scale=cv**2 / rate).ppf(probabilities)
    np.testing.assert_allclose(np.quantile(gaps, probabilities), expected, rtol=0.05)


def test_diurnal_rate_follows_the_sine() -> None:
    rate, amplitude, period, phase, duration = 100.0, 0.8, 100.0, 30.0, 2000.0
    spec = {"kind": "diurnal", "rate": rate, "amplitude": amplitude, "period": period, "phase": phase}
    times = run(workload(spec), duration).time
    edges = np.linspace(0, period, 26)
    observed, _ = np.histogram(times % period, edges)
    cycles = duration / period
    expected = [
        cycles * integrate.quad(lambda t: rate * (1 + amplitude * np.sin(2 * np.pi * (t - phase) / period)), a, b)[0]
        for a, b in zip(edges[:-1], edges[1:])
    ]
    assert observed.sum() == pytest.approx(rate * duration, abs=4 * np.sqrt(rate * duration))
    shape = np.array(expected) * observed.sum() / np.sum(expected)
    assert stats.chisquare(observed, shape).pvalue > 0.001
    centres = (edges[:-1] + edges[1:]) / 2
    assert abs(centres[observed.argmax()] - (phase + period / 4)) <= 6  # sine peaks a quarter period after phase
    assert abs(centres[observed.argmin()] - (phase + 3 * period / 4 - period)) <= 6
    assert observed.max() / observed.min() > 5  # (1 + 0.8) / (1 - 0.8) = 9


def test_step_changes_the_rate_at_each_step_and_zero_means_silence() -> None:
    steps = [{"at": 180, "rate": 20}, {"at": 100, "rate": 50}, {"at": 150, "rate": 0}]  # unsorted on purpose
    times = run(workload({"kind": "step", "rate": 10, "steps": steps}), 200.0).time
    counts, _ = np.histogram(times, [0, 100, 150, 180, 200])
    for count, expected in zip(counts, [1000, 2500, 0, 400]):
        assert abs(count - expected) <= 4 * np.sqrt(expected)
    assert counts[2] == 0
    before, after = np.histogram(times, [95, 100, 105])[0]
    assert after > 2.5 * before  # 50/s against 10/s, right at the step


@pytest.mark.parametrize(
    "arrival",
    [
        {"kind": "poisson", "rate": 0},
        {"kind": "gamma", "rate": 0, "cv": 2},
        {"kind": "diurnal", "rate": 0},
        {"kind": "step", "rate": 0, "steps": [{"at": 5, "rate": 0}]},
    ],
)
def test_zero_rate_gives_no_arrivals_with_the_right_dtypes(arrival: dict[str, Any]) -> None:
    arrivals = run(workload(arrival), 10.0)
    assert len(arrivals) == 0
    assert arrivals.time.dtype == np.float64
    assert arrivals.prompt_tokens.dtype == np.int32
    assert arrivals.request_class.dtype == np.int16
    assert arrivals.client_region.dtype == np.int16


@pytest.mark.parametrize(
    "arrival",
    [
        {"kind": "poisson", "rate": 3000},
        {"kind": "gamma", "rate": 3000, "cv": 2},
        {"kind": "diurnal", "rate": 3000, "period": 40},
        {"kind": "step", "rate": 2000, "steps": [{"at": 30, "rate": 6000}, {"at": 70, "rate": 0}]},
    ],
)
def test_a_longer_run_extends_the_arrivals_of_a_shorter_one(arrival: dict[str, Any]) -> None:
    spec = workload(arrival)
    short, long = run(spec, 50.0).time, run(spec, 100.0).time
    assert len(short) > 1 << 17  # spans several draw blocks
    np.testing.assert_array_equal(long[: len(short)], short)
    assert long[len(short)] >= 50.0


def test_mean_rate_matches_the_expected_count() -> None:
    assert mean_rate(workload({"kind": "gamma", "rate": "120/min", "cv": 2}).arrival, 10) == pytest.approx(2.0)
    diurnal = workload({"kind": "diurnal", "rate": 10, "amplitude": 1, "period": 100, "phase": 10}).arrival
    assert mean_rate(diurnal, 300) == pytest.approx(10)  # whole periods average out
    integral = integrate.quad(lambda t: 10 * (1 + np.sin(2 * np.pi * (t - 10) / 100)), 0, 35)[0]
    assert mean_rate(diurnal, 35) == pytest.approx(integral / 35)
    step = workload({"kind": "step", "rate": 10, "steps": [{"at": 50, "rate": 30}, {"at": 500, "rate": 0}]}).arrival
    assert mean_rate(step, 100) == pytest.approx(20)
    arrivals = run(workload(step.model_dump()), 100.0)
    assert len(arrivals) == pytest.approx(2000, abs=4 * np.sqrt(2000))


def test_a_million_poisson_arrivals_are_generated_in_one_call() -> None:
    arrivals = run(workload({"kind": "poisson", "rate": 10_000}), 100.0)
    assert len(arrivals) == pytest.approx(1_000_000, rel=0.01)
    assert np.all(np.diff(arrivals.time) >= 0)


rates = st.one_of(st.just(0.0), st.floats(1e-3, 50))  # a rate of 1e-300/s overflows its gaps, harmlessly but noisily
arrival_specs = st.one_of(
    st.builds(lambda r: {"kind": "poisson", "rate": r}, rates),
    st.builds(lambda r, cv: {"kind": "gamma", "rate": r, "cv": cv}, rates, st.floats(0.2, 4)),
    st.builds(
        lambda r, a, p, ph: {"kind": "diurnal", "rate": r, "amplitude": a, "period": p, "phase": ph},
        rates,
        st.floats(0, 1),
        st.floats(1, 100),
        st.floats(0, 100),
    ),
    st.builds(
        lambda r, steps: {"kind": "step", "rate": r, "steps": [{"at": at, "rate": x} for at, x in steps]},
        rates,
        st.lists(st.tuples(st.floats(0, 40), rates), min_size=1, max_size=4),
    ),
)


@settings(max_examples=40, deadline=None)
@given(arrival=arrival_specs, duration=st.floats(0.5, 30), seed=st.integers(0, 2**40))
def test_arrivals_are_sorted_in_range_and_well_typed(arrival: dict[str, Any], duration: float, seed: int) -> None:
    spec = workload(arrival, classes=[{"name": "a", "share": 1}, {"name": "b", "share": 2, "priority": 3}])
    arrivals = run(spec, duration, seed=seed)
    assert np.all(np.diff(arrivals.time) >= 0)
    assert np.all((arrivals.time >= 0) & (arrivals.time < duration))
    assert arrivals.time.dtype == np.float64
    for column in (arrivals.prompt_tokens, arrivals.output_tokens):
        assert column.dtype == np.int32 and len(column) == len(arrivals) and np.all(column >= 1)
    assert set(np.unique(arrivals.request_class)) <= {0, 1}
    np.testing.assert_array_equal(arrivals.priority, np.where(arrivals.request_class == 1, 3, 0))


# --------------------------------------------------------------------------- lengths


def lengths(spec: dict[str, Any], n_per_second: float = 20_000, seconds: float = 5.0) -> np.ndarray:
    return run(workload({"kind": "poisson", "rate": n_per_second}, prompt_tokens=spec), seconds).prompt_tokens


def test_fixed_length() -> None:
    assert set(lengths({"kind": "fixed", "value": 77})) == {77}


def test_uniform_length_is_inclusive_and_flat() -> None:
    values = lengths({"kind": "uniform", "low": 3, "high": 7})
    assert values.min() == 3 and values.max() == 7
    assert stats.chisquare(np.bincount(values)[3:]).pvalue > 0.001


def test_lognormal_length_has_its_median_and_sigma() -> None:
    values = lengths({"kind": "lognormal", "median": 200, "sigma": 0.5})
    assert np.median(values) == pytest.approx(200, rel=0.02)
    assert np.log(values).std() == pytest.approx(0.5, rel=0.03)


def test_lognormal_length_is_clipped_to_one_and_max() -> None:
    values = lengths({"kind": "lognormal", "median": 50, "sigma": 3, "max": 2000})
    assert values.min() == 1 and values.max() == 2000
    assert np.mean(values == 2000) == pytest.approx(stats.norm.sf(np.log(2000 / 50) / 3), abs=0.01)


def test_empirical_length_follows_its_weights() -> None:
    values = lengths({"kind": "empirical", "values": [10, 100, 1000], "weights": [0.6, 0, 0.4]})
    assert set(values) == {10, 1000}
    assert np.mean(values == 10) == pytest.approx(0.6, abs=0.01)
    unweighted = lengths({"kind": "empirical", "values": [5, 6, 7, 8]})
    assert stats.chisquare(np.bincount(unweighted)[5:]).pvalue > 0.001


# --------------------------------------------------------------------------- classes and regions


def test_class_shares_and_priorities() -> None:
    classes = [
        {"name": "interactive", "share": 7, "priority": 0},
        {"name": "batch", "share": 2, "priority": 2},
        {"name": "eval", "share": 1, "priority": 1},
    ]
    arrivals = run(workload({"kind": "poisson", "rate": 20_000}, classes=classes), 5.0)
    assert arrivals.class_names == ["interactive", "batch", "eval"]
    np.testing.assert_allclose(shares(arrivals.request_class, 3), [0.7, 0.2, 0.1], atol=0.01)
    np.testing.assert_array_equal(arrivals.priority, np.array([0, 2, 1])[arrivals.request_class])
    assert arrivals.priority.dtype == np.int16


def test_client_regions_follow_their_normalised_shares() -> None:
    regions = {"aws/us-east-1": 3, "gcp/europe-west4": 0, "azure/westus": 1}
    arrivals = run(workload({"kind": "poisson", "rate": 20_000}, client_regions=regions), 5.0)
    assert arrivals.region_names == list(regions)
    np.testing.assert_allclose(shares(arrivals.client_region, 3), [0.75, 0, 0.25], atol=0.01)


def test_clients_spread_evenly_over_primary_regions_by_default() -> None:
    arrivals = run(workload({"kind": "poisson", "rate": 20_000}), 5.0)
    assert arrivals.region_names == REGIONS
    np.testing.assert_allclose(shares(arrivals.client_region, 2), [0.5, 0.5], atol=0.01)


def test_no_primary_region_and_no_client_regions_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="client_regions"):
        generate(workload({"kind": "poisson", "rate": 1}), 10.0, [], RandomStreams(0))


# --------------------------------------------------------------------------- determinism and streams

COLUMNS = ("time", "prompt_tokens", "output_tokens", "request_class", "priority", "client_region")
RICH = {
    "prompt_tokens": {"kind": "lognormal", "median": 300, "sigma": 1},
    "output_tokens": {"kind": "uniform", "low": 1, "high": 400},
    "classes": [{"name": "a", "share": 1}, {"name": "b", "share": 1, "priority": 1}],
}


@pytest.mark.parametrize(
    "arrival",
    [
        {"kind": "poisson", "rate": 500},
        {"kind": "gamma", "rate": 500, "cv": 2},
        {"kind": "diurnal", "rate": 500, "period": 5},
        {"kind": "step", "rate": 500, "steps": [{"at": 5, "rate": 900}]},
    ],
)
def test_same_seed_same_arrays_other_seed_other_arrays(arrival: dict[str, Any]) -> None:
    spec = workload(arrival, **RICH)
    first, again, other = run(spec, 10.0, seed=7), run(spec, 10.0, seed=7), run(spec, 10.0, seed=8)
    for column in COLUMNS:
        np.testing.assert_array_equal(getattr(first, column), getattr(again, column))
    assert not np.array_equal(first.time[:100], other.time[:100])


def test_changing_one_length_spec_moves_nothing_else() -> None:
    arrival = {"kind": "gamma", "rate": 1000, "cv": 1.5}
    base = run(workload(arrival, **RICH), 10.0)
    new_output = run(workload(arrival, **{**RICH, "output_tokens": {"kind": "fixed", "value": 9}}), 10.0)
    for column in ("time", "prompt_tokens", "request_class", "priority", "client_region"):
        np.testing.assert_array_equal(getattr(new_output, column), getattr(base, column))
    assert set(new_output.output_tokens) == {9}
    new_prompt = run(workload(arrival, **{**RICH, "prompt_tokens": {"kind": "uniform", "low": 1, "high": 9}}), 10.0)
    np.testing.assert_array_equal(new_prompt.output_tokens, base.output_tokens)
    np.testing.assert_array_equal(new_prompt.time, base.time)


# --------------------------------------------------------------------------- trace replay


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def trace_spec(path: str, time_scale: float = 1.0, **fields: Any) -> WorkloadSpec:
    return workload({"kind": "trace", "path": path, "time_scale": time_scale}, **fields)


def test_trace_round_trip(tmp_path: Path) -> None:
    classes = [{"name": "chat", "share": 3}, {"name": "batch", "share": 1, "priority": 1}]
    lengths = {k: RICH[k] for k in ("prompt_tokens", "output_tokens")}
    source = run(workload({"kind": "poisson", "rate": 50}, classes=classes, **lengths), 20.0)
    assert np.all(np.diff(source.time) > 0)  # no ties, so the replayed order is unique
    frame = pd.DataFrame({
        "arrival_s": source.time,
        "prompt_tokens": source.prompt_tokens,
        "output_tokens": source.output_tokens,
        "class": np.array(source.class_names)[source.request_class],
        "client_region": np.array(source.region_names)[source.client_region],
    })
    frame.sample(frac=1, random_state=0).to_csv(tmp_path / "trace.csv", index=False)  # shuffled rows
    replayed = run(trace_spec("trace.csv", classes=classes), 20.0, seed=99, base_dir=tmp_path)
    for column in COLUMNS:
        np.testing.assert_array_equal(getattr(replayed, column), getattr(source, column))
    assert replayed.prompt_tokens.dtype == np.int32 and replayed.client_region.dtype == np.int16


def test_trace_time_scale_and_cut_at_duration(tmp_path: Path) -> None:
    write(tmp_path / "t.csv", "arrival_s,prompt_tokens,output_tokens\n3,4,4\n0,1,1\n2,3,3\n1,2,2\n")
    arrivals = run(trace_spec("t.csv", time_scale=0.5), 1.5, base_dir=tmp_path)
    np.testing.assert_array_equal(arrivals.time, [0.0, 0.5, 1.0])  # 1.5 is at the duration: dropped
    np.testing.assert_array_equal(arrivals.prompt_tokens, [1, 2, 3])
    assert mean_rate(trace_spec("t.csv", time_scale=0.5).arrival, 1.5, base_dir=tmp_path) == pytest.approx(2.0)


def test_trace_blank_or_missing_labels_are_drawn_by_share(tmp_path: Path) -> None:
    rows = "\n".join(f"{i / 100},10,10,{'b' if i % 10 == 0 else ''}" for i in range(10_000))
    write(tmp_path / "t.csv", "arrival_s,prompt_tokens,output_tokens,class\n" + rows + "\n")
    classes = [{"name": "a", "share": 1}, {"name": "b", "share": 1}]
    spec = trace_spec("t.csv", classes=classes, client_regions={"x/y": 1, "x/z": 3})
    arrivals = run(spec, 1000.0, base_dir=tmp_path)
    given_b = np.arange(10_000) % 10 == 0
    assert np.all(arrivals.request_class[given_b] == 1)
    assert np.mean(arrivals.request_class[~given_b]) == pytest.approx(0.5, abs=0.02)
    assert np.mean(arrivals.client_region) == pytest.approx(0.75, abs=0.02)


def test_example_trace_replays(tmp_path: Path) -> None:
    spec = trace_spec(str(EXAMPLE_TRACE))
    arrivals = run(spec, 3600.0)
    assert 200 <= len(arrivals) <= 1000
    assert np.all(np.diff(arrivals.time) >= 0)
    assert mean_rate(spec.arrival, 120.0) == pytest.approx(len(arrivals) / 120.0)


HEADER = "arrival_s,prompt_tokens,output_tokens,class,client_region\n"
INTEGER = "expected an integer between 1 and 2147483647"
SECONDS = "expected a number of seconds >= 0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "trace is empty; expected a header line naming arrival_s, prompt_tokens, output_tokens"),
        ("arrival_s,prompt_tokens\n1,2\n", "missing column 'output_tokens'; expected a header line"),
        ("arrival_s,prompt_tokens,output_tokens,clas\n1,2,3,a\n", "unknown column 'clas'"),
        (HEADER + "0,1,1,a,\nsoon,1,1,a,\n", f"line 3, column 'arrival_s': {SECONDS}, got 'soon'"),
        (HEADER + "-1,1,1,a,\n", f"line 2, column 'arrival_s': {SECONDS}, got '-1'"),
        (HEADER + "1,0,1,,\n", f"line 2, column 'prompt_tokens': {INTEGER}, got '0'"),
        (
            HEADER + "1,1,1.5,,\n2,1,x,,\n3,1,,,\n",
            f"line 2, column 'output_tokens': {INTEGER}, got '1.5' (2 more bad rows)",
        ),
        (  # the blank line 3 is skipped but still counted
            HEADER + "1,1,1,a,\n\n1,1,1,z,\n",
            "line 4, column 'class': expected a class name, one of ['a', 'b'] (or blank to draw by share), got 'z'",
        ),
        (
            HEADER + "1,1,1,a,mars/base\n",
            "line 2, column 'client_region': expected a region path, one of ['aws/us-east-1', 'gcp/europe-west4']",
        ),
        ("arrival_s,prompt_tokens,output_tokens\n1,2,3,4\n", "not a valid CSV trace: line 2 has more fields"),
        ("arrival_s,prompt_tokens,output_tokens\n1,2,3\n1,2,3,4\n", "not a valid CSV trace"),
    ],
)
def test_trace_errors_name_the_file_the_place_and_the_expectation(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.csv", text)
    spec = trace_spec("bad.csv", classes=[{"name": "a", "share": 1}, {"name": "b", "share": 1}])
    with pytest.raises(SpecError) as caught:
        run(spec, 100.0, base_dir=tmp_path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_missing_trace_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.csv: cannot read trace: No such file"):
        run(trace_spec("nope.csv"), 10.0, base_dir=tmp_path)
