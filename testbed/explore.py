"""The explorer's logic, apart from its page: what-if knobs applied to a catalog scenario.

``app.py`` only lays out widgets; everything it does with their values is here, so it can be
tested without a browser. A what-if is a catalog scenario plus :class:`Knobs`: the knobs are
written into the scenario's own spec (as data) and the result is validated by the same pydantic
models as a YAML file, so a bad value gets the same one-line message naming the field — shown
in the page, never as a traceback — and the scenario the user downloads is exactly what ran.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from testbed.records.result import Result
from testbed.sim import simulate
from testbed.spec import Scenario, SpecError, validate_spec

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_DIR = ROOT / "faults"
DEFAULT_SCENARIO = "provider-outage-fallback"  # ~1,100 requests: a run takes well under a second
SOURCE = "explorer settings"
# A what-if expected to simulate this many requests or fewer reruns on every change (about a
# second); a bigger one waits for the Run button, so editing five knobs costs one run, not five.
AUTO_RUN_REQUESTS = 20_000

# Scripted fault kinds the page can add, and the one parameter each takes (None: no parameter).
FAULT_PARAMETERS: dict[str, str | None] = {
    "outage": None,
    "node_crash": None,
    "node_hang": None,
    "accelerator_failure": None,
    "capacity_loss": "share",
    "slowdown": "speed",
    "memory_pressure": "kv_fraction",
    "error_injection": "rate",
    "partition": None,
    "latency": "delay",
    "packet_loss": "loss",
    "bandwidth": "limit",
}
NETWORK_KINDS = ("partition", "latency", "packet_loss", "bandwidth")
PROCESS_LEVELS = ("node", "rack", "zone", "region")
PROCESS_EFFECT = {"node": "node_crash", "rack": "outage", "zone": "outage", "region": "outage"}


def scenario_catalog(directory: Path = SCENARIO_DIR) -> dict[str, Path]:
    """Catalog scenarios by name (file stem), in name order."""
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))}


def load_uploaded(text: str, name: str = "uploaded.yaml") -> Scenario:
    """A scenario from an uploaded file's text; relative paths resolve against ``faults/``,
    where the catalog's scenarios live, so a downloaded catalog file uploads back unchanged."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(f"{name}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{name}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return validate_spec(data, Scenario, source=name, base_dir=SCENARIO_DIR)


def scenario_from_yaml(text: str) -> Scenario:
    """The scenario a downloaded YAML describes (what a test or a campaign does with it)."""
    return load_uploaded(text, name="scenario.yaml")


# --------------------------------------------------------------------------- knobs


@dataclass
class Knobs:
    """Every what-if the page offers. ``None`` means "leave the scenario's own value"."""

    duration: float
    seed: int
    rate: float | None = None
    burstiness: float | None = None  # gamma inter-arrival CV; 1 = Poisson
    agent_share: float | None = None
    replicas: dict[str, int] = field(default_factory=dict)  # region path -> replicas wanted
    batching: str = "continuous"
    max_batch: int = 256
    max_delay: float = 0.01
    adaptive: bool = False
    target_latency: float | None = None
    routing: str = "least_outstanding"
    failover: bool = True
    fallback_tier: bool = True
    max_attempts: int = 3
    hedging: bool = False
    health_period: float = 5.0
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)  # level -> failure_process spec
    scripted: list[dict[str, Any]] = field(default_factory=list)  # scripted fault specs, as in YAML


def knobs_from(scenario: Scenario) -> Knobs:
    """The knobs' starting values: what the scenario itself says."""
    arrival = scenario.workload.arrival
    serving = scenario.serving
    batching = serving.batching
    micro = batching.policy == "micro"
    faults = [f.model_dump(mode="json", by_alias=True) for f in scenario.faults]
    processes = {f["level"]: f for f in faults if f["kind"] == "failure_process"}
    return Knobs(
        duration=scenario.duration,
        seed=scenario.seed,
        rate=getattr(arrival, "rate", None),
        burstiness=getattr(arrival, "cv", 1.0) if arrival.kind in ("poisson", "gamma") else None,
        agent_share=scenario.workload.agents.share if scenario.workload.agents else None,
        replicas=region_replicas(scenario),
        batching=batching.policy,
        max_batch=batching.max_batch_size if micro else batching.max_num_seqs,
        max_delay=batching.max_queue_delay if micro else 0.01,
        adaptive=batching.adaptive if micro else False,
        target_latency=batching.target_latency if micro else None,
        routing=serving.routing.policy,
        failover=serving.failover.enabled,
        fallback_tier=serving.failover.fallback_tier,
        max_attempts=serving.retries.max_attempts,
        hedging=serving.hedging.enabled,
        health_period=serving.health_check.period,
        processes=processes,
        scripted=[f for f in faults if f["kind"] != "failure_process"],
    )


def region_replicas(scenario: Scenario) -> dict[str, int]:
    """Replicas per region path, as the topology spec places them."""
    counts = {}
    for provider in scenario.topology.providers:
        for region in provider.regions:
            counts[f"{provider.name}/{region.name}"] = sum(
                rack.count * rack.nodes * (rack.devices_per_node // rack.tensor_parallel)
                for zone in region.zones
                for rack in zone.racks
            )
    return counts


def _resize_region(region: dict[str, Any], wanted: int) -> None:
    """Scale a region's racks towards ``wanted`` replicas, keeping its zones and rack kinds.

    Nodes per rack scale first; below one node per rack the rack count shrinks, and below one
    full node the devices per node do. The shape (and so the failure domains) stays recognisable;
    the count reached is whatever whole racks and nodes allow, and the page shows it.
    """
    racks = [rack for zone in region["zones"] for rack in zone["racks"]]
    current = sum(r["count"] * r["nodes"] * (r["devices_per_node"] // r["tensor_parallel"]) for r in racks)
    factor = wanted / current
    for rack in racks:
        per_node = rack["devices_per_node"] // rack["tensor_parallel"]
        nodes = rack["count"] * rack["nodes"] * factor  # nodes this rack kind should have in all
        if nodes >= rack["count"]:
            rack["nodes"] = max(1, round(nodes / rack["count"]))
        elif nodes >= 1:
            rack["count"], rack["nodes"] = max(1, round(nodes)), 1
        else:
            rack["count"], rack["nodes"] = 1, 1
            rack["devices_per_node"] = max(1, round(per_node * nodes)) * rack["tensor_parallel"]


def _arrival(arrival: dict[str, Any], knobs: Knobs) -> dict[str, Any]:
    """The arrival process with the knobs' rate and burstiness (a step profile scales as a whole)."""
    if knobs.rate is not None and arrival["kind"] != "trace":
        if arrival["kind"] == "step" and arrival["rate"] > 0:
            scale = knobs.rate / arrival["rate"]
            arrival["steps"] = [{**s, "rate": s["rate"] * scale} for s in arrival["steps"]]
        arrival["rate"] = knobs.rate
    if knobs.burstiness is not None and arrival["kind"] in ("poisson", "gamma"):
        if knobs.burstiness == 1.0:
            arrival = {"kind": "poisson", "rate": arrival["rate"]}
        else:
            arrival = {"kind": "gamma", "rate": arrival["rate"], "cv": knobs.burstiness}
    return arrival


def _batching(batching: dict[str, Any], knobs: Knobs) -> dict[str, Any]:
    if knobs.batching == "micro":
        return {
            "policy": "micro",
            "max_batch_size": knobs.max_batch,
            "max_queue_delay": knobs.max_delay,
            "adaptive": knobs.adaptive,
            "target_latency": knobs.target_latency,
        }
    kept = batching if batching.get("policy") == "continuous" else {"policy": "continuous"}
    return {**kept, "max_num_seqs": knobs.max_batch}


def build_scenario(base: Scenario, knobs: Knobs) -> tuple[Scenario, list[str]]:
    """``base`` with the knobs applied, validated like a YAML file; and notes for the page
    (e.g. the replica count a region could actually be resized to).

    Raises :class:`SpecError` with one line per problem, naming the field, on invalid values.
    """
    data = base.model_dump(mode="json", by_alias=True)
    data["duration"], data["seed"] = knobs.duration, knobs.seed
    workload = data["workload"]
    workload["arrival"] = _arrival(workload["arrival"], knobs)
    if knobs.agent_share is not None and workload.get("agents"):
        workload["agents"]["share"] = knobs.agent_share
    notes = []
    wanted = {region: n for region, n in knobs.replicas.items() if region_replicas(base).get(region) != n}
    for provider in data["topology"]["providers"]:
        for region in provider["regions"]:
            path = f"{provider['name']}/{region['name']}"
            if path in wanted:
                if wanted[path] < 1:
                    raise SpecError(f"{SOURCE}: replicas of {path}: expected at least 1 (got {wanted[path]})")
                _resize_region(region, wanted[path])
    serving = data["serving"]
    serving["batching"] = _batching(serving["batching"], knobs)
    serving["routing"]["policy"] = knobs.routing
    serving["failover"].update(enabled=knobs.failover, fallback_tier=knobs.fallback_tier)
    serving["retries"]["max_attempts"] = knobs.max_attempts
    serving["hedging"]["enabled"] = knobs.hedging
    serving["health_check"]["period"] = knobs.health_period
    data["faults"] = copy.deepcopy(knobs.scripted) + [copy.deepcopy(p) for p in knobs.processes.values()]
    scenario = validate_spec(data, Scenario, source=SOURCE, base_dir=SCENARIO_DIR)
    if scenario.model_dump(mode="json") != base.model_dump(mode="json"):
        # The download is a new scenario: it must not pass for the catalog file it came from.
        scenario = scenario.model_copy(update={"name": whatif_name(base.name)})
    for region, n in region_replicas(scenario).items():
        if region in wanted and n != wanted[region]:
            notes.append(f"{region}: {wanted[region]} replicas asked, {n} placed (whole racks and nodes)")
    return scenario, notes


def whatif_name(name: str) -> str:
    """The name of an edited scenario: the base's, marked as a what-if (once)."""
    return name if name.endswith("-whatif") else f"{name}-whatif"


def expected_requests(scenario: Scenario) -> int | None:
    """About how many requests a run will simulate (rate x duration), or None if the arrival
    process has no single rate (a trace, a diurnal curve)."""
    rate = getattr(scenario.workload.arrival, "rate", None)
    return None if rate is None else int(rate * scenario.duration)


def runs_on_change(scenario: Scenario) -> bool:
    """Whether the page simulates as soon as a knob changes, or waits for the Run button."""
    expected = expected_requests(scenario)
    return expected is not None and expected <= AUTO_RUN_REQUESTS


def fault_spec(kind: str, target: str, at: float, duration: float | None, value: float | None = None) -> dict[str, Any]:
    """A scripted fault as its YAML mapping. Network faults take ``target`` as ``a <-> b``."""
    if kind not in FAULT_PARAMETERS:
        raise SpecError(f"{SOURCE}: fault kind {kind!r}: expected one of {sorted(FAULT_PARAMETERS)}")
    spec: dict[str, Any] = {"kind": kind, "at": at, "duration": duration}
    if kind in NETWORK_KINDS:
        ends = [end.strip() for end in target.split("<->")]
        if len(ends) != 2 or not all(ends):
            raise SpecError(f"{SOURCE}: {kind} fault: expected the path as 'a <-> b', e.g. 'clients:aws/us-east-1 <-> aws/us-east-1' (got {target!r})")
        spec["between"] = ends
    else:
        spec["target"] = target
    parameter = FAULT_PARAMETERS[kind]
    if parameter is not None:
        if value is None:
            raise SpecError(f"{SOURCE}: {kind} fault needs {parameter}")
        spec[parameter] = value
    return spec


def describe_fault(spec: dict[str, Any]) -> str:
    """One line for a fault spec, e.g. 'outage aws at 180 s for 240 s'."""
    where = " <-> ".join(spec["between"]) if "between" in spec else spec.get("target", spec.get("within", ""))
    if spec["kind"] == "failure_process":
        return f"failure process: {spec['level']}s in {where}, MTBF {spec['mtbf']}, MTTR {spec['mttr']}"
    lasting = "never repaired" if spec.get("duration") is None else f"for {spec['duration']:g} s"
    parameter = FAULT_PARAMETERS.get(spec["kind"])
    extra = f" ({parameter} {spec[parameter]})" if parameter and parameter in spec else ""
    return f"{spec['kind']} {where} at {spec['at']:g} s {lasting}{extra}"


def failure_process(level: str, mtbf: str | float, mttr: str | float, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A failure process over every domain at ``level`` (keeping a scenario's own distribution)."""
    spec = dict(base or {"kind": "failure_process", "level": level, "effect": PROCESS_EFFECT[level]})
    spec.update(mtbf=mtbf, mttr=mttr)
    return spec


# --------------------------------------------------------------------------- running


class _Cache:
    """Runs by (scenario YAML, seed): the page reruns its script on every click, and a what-if
    the user comes back to (or the A side of a comparison) should not simulate again."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[str, int], Result] = OrderedDict()
        self.lock = threading.Lock()
        self.misses = 0

    def run(self, scenario: Scenario, progress: Callable[[float], None] | None = None) -> Result:
        key = (scenario.to_yaml(), scenario.seed)
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        result = simulate(scenario, progress=progress)
        with self.lock:
            self.misses += 1
            self.entries[key] = result
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return result


RUNS = _Cache()


def run(scenario: Scenario, progress: Callable[[float], None] | None = None) -> Result:
    """Simulate ``scenario`` (its own seed), or return the cached result of the same inputs."""
    return RUNS.run(scenario, progress)


# --------------------------------------------------------------------------- A/B


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{prefix}.{i}")
    else:
        yield prefix, value


def scenario_diff(a: Scenario, b: Scenario) -> pd.DataFrame:
    """Fields whose values differ between two scenarios: field, A, B."""
    left = dict(_leaves(a.model_dump(mode="json", by_alias=True)))
    right = dict(_leaves(b.model_dump(mode="json", by_alias=True)))
    rows = [
        {"field": name, "A": _show(left.get(name)), "B": _show(right.get(name))}
        for name in sorted(set(left) | set(right))
        if left.get(name) != right.get(name) and name != "name"
    ]
    return pd.DataFrame(rows, columns=["field", "A", "B"])


def _show(value: Any) -> str:
    return "—" if value is None else str(value)


def verdict_diff(a: Result, b: Result) -> pd.DataFrame:
    """Each objective's verdict under A and B: observed values, margins, and whether it flipped."""
    from testbed.report.markdown import format_value

    rows = []
    b_verdicts = {v.objective: v for v in b.sla}
    for va in a.sla:
        vb = b_verdicts.get(va.objective)
        rows.append(
            {
                "objective": va.objective,
                "A observed": format_value(va.observed, va.unit),
                "B observed": format_value(vb.observed, vb.unit) if vb else "—",
                "A margin": format_value(va.margin, va.unit),
                "B margin": format_value(vb.margin, vb.unit) if vb else "—",
                "A": "pass" if va.passed else "FAIL",
                "B": ("pass" if vb.passed else "FAIL") if vb else "—",
                "changed": vb is None or va.passed != vb.passed,
            }
        )
    return pd.DataFrame(rows)


def outcome_comparison(a: Result, b: Result) -> pd.DataFrame:
    """How every request ended under A and under B, with B - A: the failures a latency
    comparison over successes alone leaves out."""
    from testbed.report.markdown import outcome_counts

    left, right = outcome_counts(a.requests), outcome_counts(b.requests)
    rows = [{"outcome": name, "A": left[name], "B": right[name], "B - A": right[name] - left[name]} for name in left]
    rows.append({"outcome": "all", "A": len(a.requests), "B": len(b.requests), "B - A": len(b.requests) - len(a.requests)})
    return pd.DataFrame(rows, columns=["outcome", "A", "B", "B - A"])


# --------------------------------------------------------------------------- hunting


def hunt_available() -> bool:
    """Whether failure hunting (``testbed.hunt``) is installed in this checkout."""
    return importlib.util.find_spec("testbed.hunt") is not None


def hunt_kinds() -> tuple[str, ...]:
    """The fault kinds a hunt can draw, in the order the page offers them."""
    from testbed.strategies import DEFAULT_KINDS

    return tuple(DEFAULT_KINDS)


def already_failing(result: Result, objectives: Sequence[str] | None = None) -> list[str]:
    """The objectives (of ``objectives``, or all) that fail before any fault is added: a hunt on
    these settings would only rediscover them."""
    return [v.objective for v in result.sla if not v.passed and (not objectives or v.objective in objectives)]


def hunt(
    scenario: Scenario,
    budget: int,
    progress: Callable[[str, int, int], None] | None = None,
    kinds: Sequence[str] | None = None,
    objectives: Sequence[str] | None = None,
) -> Any:
    """Search up to ``budget`` fault schedules of ``kinds`` for one that breaks one of
    ``objectives`` (default: any objective), and shrink it (:func:`testbed.hunt.hunt`);
    shrinking gets twice the budget, so a click stays bounded."""
    from testbed.hunt import hunt as search

    return search(
        scenario, budget=budget, shrink_budget=2 * budget, seed=scenario.seed, progress=progress,
        kinds=kinds or None, objectives=objectives or None,
    )


# --------------------------------------------------------------------------- downloads


def records_csv(result: Result) -> bytes:
    """The request records as CSV, for spreadsheets."""
    return result.requests.to_csv(index=False).encode()


def records_parquet(result: Result) -> bytes:
    """The request records as parquet, the format ``testbed run`` writes."""
    buffer = io.BytesIO()
    result.requests.to_parquet(buffer, index=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------- serving the page


def streamlit_command(address: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The command that serves ``app.py``: bound to ``address`` (this machine only by default)."""
    app = ROOT / "app.py"
    if not app.is_file():
        raise SpecError(f"{app}: not found; the explorer runs from a source checkout (pip install -e '.[explore]')")
    if importlib.util.find_spec("streamlit") is None:
        raise SpecError("streamlit is not installed; install the explorer with pip install -e '.[explore]'")
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", address, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
    ]


def serve(address: str = "127.0.0.1", port: int = 8501) -> int:
    """Run Streamlit in the foreground until it exits; SIGINT and SIGTERM are passed on to it,
    so stopping ``testbed explore`` (from a terminal or a supervisor) never leaves it behind."""
    process = subprocess.Popen(streamlit_command(address, port))

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
