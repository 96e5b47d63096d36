"""pytest plugin for resilience suites (registered through the ``pytest11`` entry point).

What a suite gets:

* options ``--testbed-seed N`` (override every scenario's seed), ``--testbed-plane sim|live`` and
  ``--testbed-artifacts DIR`` (where the files that outlive a test go, default ``.testbed/``);
* fixtures ``scenario_loader`` (load a scenario file, failing the test with the spec's own
  message), ``run_scenario`` (run one, with the seed option, the plane option and the ``chaos``
  marker's faults applied) and ``live_stack`` (a real stack started once per session);
* the ``chaos`` marker: ``@pytest.mark.chaos(faults=[{...}])`` or ``@pytest.mark.chaos(file=...)``
  attaches a fault schedule to every scenario the test runs through ``run_scenario``;
* :func:`assert_sla`, whose failure lists each violated objective with observed value, limit
  and margin, and the ``testbed`` command that reproduces the run; :func:`assert_sla_fails` for
  a run that is meant to break an objective;
* artifacts that outlive pytest's temporary directories: the scenario file each reproduce line
  names, and, for a failing test, the ``report.html`` (or ``report.md`` without plotly) of every
  run it made, under ``--testbed-artifacts``, one folder per test, listed in the failure report;
* the Hypothesis strategies (``fault_schedules``, ``faults``, ``scenario_perturbations``),
  re-exported lazily so ``@given(schedule=fault_schedules(topology))`` reads naturally.

pytest imports this module in every session of every project that has testbed installed, so it
imports nothing heavy at load: specs, the simulator and the live plane load on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from testbed.live.stack import StackThread
    from testbed.records.result import Result
    from testbed.spec import FaultSpec, Scenario

PLANES = ("sim", "live")
STRATEGIES = ("fault_schedules", "faults", "scenario_perturbations")
SOURCE_KEY = "scenario_file"  # Result.stats key: the file that reproduces the run
ARTIFACTS_KEY = "testbed_artifacts"  # Result.stats key: the test's artifact folder
RUNS = pytest.StashKey[list]()  # the results a test made through run_scenario, for its failure report
__all__ = ["assert_sla", "assert_sla_fails", *STRATEGIES]


def __getattr__(name: str) -> Any:
    """Hypothesis strategies on first use, so loading the plugin does not load Hypothesis."""
    if name in STRATEGIES:
        import testbed.strategies

        return getattr(testbed.strategies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testbed")
    group.addoption("--testbed-seed", type=int, default=None, help="override the seed of every scenario run")
    group.addoption(
        "--testbed-plane",
        choices=PLANES,
        default="sim",
        help="run scenarios in simulation (default) or replay them on the live stack",
    )
    group.addoption(
        "--testbed-artifacts",
        default=".testbed",
        metavar="DIR",
        help="folder (relative to the rootdir) for reproduce files and failing tests' reports (default .testbed)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "chaos(faults=None, file=None): add a fault schedule (a list of fault specs, or a YAML file with a "
        "faults: list) to every scenario the test runs with run_scenario",
    )


@pytest.fixture
def testbed_seed(request: pytest.FixtureRequest) -> int | None:
    """The seed given with --testbed-seed, or None to keep each scenario's own."""
    return request.config.getoption("--testbed-seed")


@pytest.fixture
def testbed_plane(request: pytest.FixtureRequest) -> str:
    """``sim`` or ``live``, from --testbed-plane."""
    return request.config.getoption("--testbed-plane")


@pytest.fixture
def testbed_artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's folder under --testbed-artifacts: kept after the run, unlike pytest's tmp_path.

    Created on first use; named after the test id, so a rerun of the test replaces its files.
    """
    root = Path(request.config.getoption("--testbed-artifacts"))
    if not root.is_absolute():
        root = Path(request.config.rootpath) / root
    folder = root / _safe_name(request.node.nodeid)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def scenario_loader(request: pytest.FixtureRequest) -> Callable[[str | os.PathLike[str]], Scenario]:
    """``load(path) -> Scenario``; relative paths are tried next to the test file, then at the rootdir.

    A bad file fails the test with the spec's one-line message (file, field, what was expected)
    instead of a traceback into pydantic.
    """
    here = Path(request.node.path).parent
    root = Path(request.config.rootpath)

    def load(path: str | os.PathLike[str]) -> Scenario:
        return _load_scenario(_locate(Path(path), here, root))

    return load


@pytest.fixture
def chaos_faults(request: pytest.FixtureRequest) -> list[FaultSpec]:
    """The faults of the test's ``chaos`` markers (class and module markers too), validated."""
    here = Path(request.node.path).parent
    root = Path(request.config.rootpath)
    added: list[FaultSpec] = []
    for marker in reversed(list(request.node.iter_markers("chaos"))):  # outermost first
        added += _marker_faults(marker, request.node.nodeid, here, root)
    return added


@pytest.fixture
def run_scenario(
    scenario_loader: Callable[[str | os.PathLike[str]], Scenario],
    chaos_faults: list[FaultSpec],
    testbed_seed: int | None,
    testbed_plane: str,
    testbed_artifacts: Path,
    request: pytest.FixtureRequest,
) -> Callable[..., Result]:
    """``run(scenario_or_path, *, faults=(), seed=None, duration=None) -> Result``.

    The seed is ``seed``, else --testbed-seed, else the scenario's own. Faults from the ``chaos``
    marker and then ``faults`` are added to the scenario's own. ``duration`` is seconds or a
    string as in a spec (``"4min"``). The plane is --testbed-plane. The result remembers a file
    that reproduces the run (the scenario's own, or one written under --testbed-artifacts), for
    :func:`assert_sla`'s message; a failing test keeps each run's report there too.
    """
    runs = request.node.stash.setdefault(RUNS, [])

    def run(
        scenario: Scenario | str | os.PathLike[str],
        *,
        faults: Sequence[FaultSpec | dict[str, Any]] = (),
        seed: int | None = None,
        duration: float | str | None = None,
    ) -> Result:
        duration = _duration(duration)
        source: Path | None = None
        if isinstance(scenario, (str, os.PathLike)):
            source = Path(scenario)
            scenario = scenario_loader(source)
        added = [*chaos_faults, *_validated_faults(list(faults), "run_scenario(faults=...)")]
        if added:
            scenario = _with_faults(scenario, added)
            source = None
        run_seed = seed if seed is not None else testbed_seed if testbed_seed is not None else scenario.seed
        result = _run_on_plane(scenario, run_seed, duration, testbed_plane)
        if source is None:
            from testbed.explain import scenario_yaml

            source = testbed_artifacts / f"{scenario.name}-seed{run_seed}.yaml"
            source.write_text(scenario_yaml(scenario, seed=run_seed))
        result.stats[SOURCE_KEY] = str(source)
        result.stats[ARTIFACTS_KEY] = str(testbed_artifacts)
        result.stats["plane"] = testbed_plane
        if duration is not None:
            result.stats["duration_override"] = duration
        runs.append(result)
        return result

    return run


@pytest.fixture(scope="session")
def live_stack_options() -> dict[str, Any]:
    """Keyword arguments of the session's :class:`~testbed.live.stack.LiveStack`; override in a conftest."""
    return {"n_replicas": 2, "model": "tiny"}


@pytest.fixture(scope="session")
def live_stack(live_stack_options: dict[str, Any]) -> Iterator[StackThread]:
    """A real live stack (replica processes, proxies, gateway on 127.0.0.1), started once per session.

    Yields a :class:`~testbed.live.stack.StackThread`: ``live_stack.stack.gateway_url`` to send
    requests, ``live_stack.run(live_stack.stack.kill("r0"))`` to inject a fault. Skipped with the
    reason when the live extra (torch, fastapi, ...) is not installed.
    """
    try:
        from testbed.live.stack import LiveStack, StackThread
    except ImportError as exc:
        pytest.skip(f"the live plane is not installed ({exc.name or exc} is missing): pip install -e '.[live]'")
    thread = StackThread(LiveStack(**live_stack_options))
    with thread:
        yield thread


def assert_sla(result: Result, *, only: Sequence[str] | None = None, ignore: Sequence[str] = ()) -> None:
    """Fail unless every SLA objective of ``result`` holds.

    ``only`` and ``ignore`` pick objectives by label ("p99 ttft [interactive]") or metric
    ("availability"). The message lists each violated objective with observed value, limit and
    margin, and the command that reproduces the run.
    """
    __tracebackhide__ = True
    chosen = [v for v in result.sla if _picked(v, only, ignore)]
    if only is not None and not chosen:
        known = ", ".join(sorted({v.objective for v in result.sla} | {v.metric for v in result.sla}))
        raise AssertionError(f"assert_sla: only={list(only)} matches no objective; objectives: {known}")
    violated = [v for v in chosen if not v.passed]
    if violated:
        raise AssertionError(failure_message(result, violated, len(chosen)))


def assert_sla_fails(result: Result, objective: str | None = None) -> list[Any]:
    """Fail unless ``result`` violates ``objective`` (a label such as "p99 ttft" or a metric such
    as "availability"; None: any objective). Returns the violated verdicts it matched.

    For a scenario that is meant to break an SLA — the "without failover" half of an A/B, a
    known limit — so the test says what must fail instead of matching assert_sla's message.
    """
    __tracebackhide__ = True
    chosen = [v for v in result.sla if objective is None or objective in {v.objective, v.metric}]
    if not chosen:
        known = ", ".join(sorted({v.objective for v in result.sla} | {v.metric for v in result.sla})) or "none"
        raise AssertionError(f"assert_sla_fails: objective={objective!r} matches no objective; objectives: {known}")
    violated = [v for v in chosen if not v.passed]
    if not violated:
        from testbed.explain import describe_verdict

        held = "\n".join(f"  {describe_verdict(v)}" for v in chosen)
        raise AssertionError(
            f"expected {objective or 'an objective'} to fail, but it held: scenario {result.scenario.name!r}, "
            f"seed {result.seed}\n{held}"
        )
    return violated


def failure_message(result: Result, violated: Sequence[Any], judged: int) -> str:
    """What :func:`assert_sla` says: the scenario and seed, each violation, how to reproduce."""
    from testbed.explain import describe_verdict, reproduce_command

    lines = [
        f"SLA violated: scenario {result.scenario.name!r}, seed {result.seed}: "
        f"{len(violated)} of {judged} objectives failed"
    ]
    lines += [f"  {describe_verdict(v)}" for v in violated]
    source = result.stats.get(SOURCE_KEY) or _write_scenario(result)
    plane = result.stats.get("plane", "sim")
    lines.append(f"reproduce: {reproduce_command(source, result.seed, plane, result.stats.get('duration_override'))}")
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test keeps the report of every run it made, and says where in its failure report."""
    outcome = yield
    report = outcome.get_result()
    runs = item.stash.get(RUNS, [])
    if report.when != "call" or not report.failed or not runs:
        return
    written = [_keep_report(result) for result in runs]
    report.sections.append(("testbed artifacts", "\n".join(f"report: {path}" for path in written if path)))


def _keep_report(result: Result) -> str | None:
    """The run's report.html (report.md without plotly) in its test's artifact folder."""
    folder = Path(result.stats[ARTIFACTS_KEY])
    stem = f"{result.scenario.name}-seed{result.seed}"
    try:
        from testbed.report.html import write_html_report

        path = folder / f"{stem}.report.html"
        if write_html_report(result, path):
            return str(path)
    except ImportError:
        pass
    from testbed.report.markdown import markdown_report

    path = folder / f"{stem}.report.md"
    path.write_text(markdown_report(result))
    return str(path)


def _duration(value: float | str | None) -> float | None:
    """``duration=`` as the marker and the CLI take it: seconds, or a string such as "4min"."""
    if value is None:
        return None
    from testbed.units import parse_duration

    try:
        return parse_duration(value)
    except (TypeError, ValueError) as exc:
        problem = f"run_scenario(duration={value!r}): {exc}"
    pytest.fail(problem, pytrace=False)


def _safe_name(nodeid: str) -> str:
    """A test id as one folder name: ``tests/test_x.py::test_y[a-1]`` -> ``tests_test_x.py__test_y_a-1_``."""
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in nodeid)[:200]


def _picked(verdict: Any, only: Sequence[str] | None, ignore: Sequence[str]) -> bool:
    names = {verdict.objective, verdict.metric}
    return (only is None or bool(names & set(only))) and not names & set(ignore)


def _locate(path: Path, here: Path, root: Path) -> Path:
    if path.is_absolute():
        return path
    for base in (here, root):
        if (base / path).exists():
            return base / path
    return here / path  # missing: the loader's message names the path tried


def _load_scenario(path: Path) -> Scenario:
    from testbed.spec import Scenario, SpecError

    try:
        return Scenario.from_yaml(path)
    except SpecError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)  # outside the except: no chained traceback in the report


def _marker_faults(marker: pytest.Mark, nodeid: str, here: Path, root: Path) -> list[FaultSpec]:
    unknown = set(marker.kwargs) - {"faults", "file"}
    if marker.args or unknown:
        pytest.fail(f"{nodeid}: chaos marker takes faults=[...] or file=...; got {marker.args or sorted(unknown)}", pytrace=False)
    where = f"{nodeid}: chaos marker"
    faults = list(marker.kwargs.get("faults") or [])
    if "file" in marker.kwargs:
        faults += _faults_file(_locate(Path(marker.kwargs["file"]), here, root))
        where += f" (file {marker.kwargs['file']})"
    return _validated_faults(faults, where)


def _faults_file(path: Path) -> list[Any]:
    """A YAML list of faults, or a mapping (a scenario, say) with a ``faults:`` list."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        data = exc
    if isinstance(data, Exception):
        pytest.fail(f"{path}: cannot read a fault schedule: {data}", pytrace=False)
    if isinstance(data, dict):
        data = data.get("faults")
    if not isinstance(data, list):
        pytest.fail(f"{path}: expected a list of faults or a mapping with a faults: list", pytrace=False)
    return data


def _validated_faults(faults: list[Any], where: str) -> list[FaultSpec]:
    if not faults:
        return []
    from pydantic import TypeAdapter, ValidationError

    from testbed.spec import FaultSpec, format_validation_error

    plain = [f.model_dump() if hasattr(f, "model_dump") else f for f in faults]
    try:
        return TypeAdapter(list[FaultSpec]).validate_python(plain)
    except ValidationError as exc:
        problem = format_validation_error(f"{where}, faults", exc)
    pytest.fail(problem, pytrace=False)


def _with_faults(scenario: Scenario, added: list[FaultSpec]) -> Scenario:
    """The scenario with ``added`` after its own faults; a target not in its topology fails the test."""
    from testbed.faults import validate_targets
    from testbed.topology import Topology

    faults = [*scenario.faults, *added]
    try:
        validate_targets(faults, Topology.from_spec(scenario.topology))
    except ValueError as exc:
        problem = f"scenario {scenario.name!r}: {exc}"
    else:
        return scenario.model_copy(update={"faults": faults})
    pytest.fail(problem, pytrace=False)


def _run_on_plane(scenario: Scenario, seed: int, duration: float | None, plane: str) -> Result:
    if plane == "sim":
        from testbed.sim import simulate

        return simulate(scenario, seed=seed, duration=duration)
    try:
        from testbed.live.replay import run_live
    except ImportError as exc:
        pytest.skip(f"--testbed-plane live needs the live extra ({exc.name or exc} is missing): pip install -e '.[live]'")
    return run_live(scenario, seed=seed, duration=duration)


def _write_scenario(result: Result) -> str:
    """A file that reproduces ``result`` when it did not come from run_scenario."""
    import tempfile

    from testbed.explain import scenario_yaml

    path = Path(tempfile.mkdtemp(prefix="testbed-")) / f"{result.scenario.name}.yaml"
    path.write_text(scenario_yaml(result.scenario, seed=result.seed))
    return str(path)
