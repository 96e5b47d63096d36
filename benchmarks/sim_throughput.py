"""How fast the simulator runs: N requests on the 1,000-GPU fleet at ~70% of its capacity.

Continuous batching, power-of-two routing, Poisson arrivals, lengths that vary per request.
This machine is shared, so absolute speeds mean little; every figure is also given as a ratio
to something measured in the same process:

* the simulator's requests/s against a bare SimPy M/M/4 queue's customers/s
  (``bare_queue.py``: 100,000 customers, rho 0.9), the yardstick of issue #17;
* with ``--failures``, the same requests without and with a stochastic node-crash process on
  the fleet (MTBF 2 min per node, MTTR 1 min: hundreds of crashes), in CPU time per request;
* with ``--cache``, the same requests without and with the cache model: eight 512-token system
  prompts per class and multi-turn chat (so requests share prefixes), prefix caching on every
  replica, routed by prefix affinity (in CPU time per request; the cache-aware routers' own cost
  is in the ``--policies`` table);
* with ``--fleet-sizes``, steady-state CPU µs per request on generated fleets of 2 to 2,304 replicas at
  the same load, Python calls per request (cProfile's count, in runs of their own), which are
  flat when nothing per request is O(replicas), and for scale a bare SimPy M/M/c queue's CPU µs
  per customer with a server per replica (O(1) work per customer, and still dearer on a larger c);
* with ``--policies``, the same table once per routing policy in the router registry, and once
  more for each cache-aware router on the prefix workload of ``--cache`` (without prefixes they
  route by power of two, which would leave their own cost out of the table);
* with ``--queue``, the fleet-size table's runs hold requests in the gateway queue (late binding),
  whose search for a free slot runs on every dispatch.

The summary line is machine-readable:

    requests=<N> wall_s=<float> requests_per_s=<float> bare_queue_per_s=<float> ratio=<float> peak_rss_mb=<float>

Run: python benchmarks/sim_throughput.py --requests 1000000 [--failures] [--fleet-sizes] [--policies] [--queue]
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import resource
import time
from pathlib import Path

from bare_queue import mmc_customers_per_second
from page import provenance, table, write_block
from testbed.capacity import fleet_capacity
from testbed.draw import draw
from testbed.policy.routing import ROUTERS
from testbed.records.result import Result
from testbed.sim import simulate
from testbed.spec import Scenario

FLEET = Path(__file__).resolve().parents[1] / "topologies" / "fleet-1k.yaml"


# Generated fleets for the size table: 2 replicas up to twice fleet-1k, one GPU per replica.
FLEET_SIZES = (2, 16, 144, 576, 1152, 2304)

FAILURES = [{"kind": "failure_process", "level": "node", "effect": "node_crash", "mtbf": "2min", "mttr": "1min"}]

# The prefix workload of --cache: shared system prompts (blocks every replica comes to hold) and
# conversations (blocks a few replicas hold), for the cache model and the cache-aware routers.
PREFIXES = {
    "system_prompts": {"count": 8, "tokens": 512},
    "chat": {"turns": {"kind": "uniform", "low": 1, "high": 4}, "max_context": 4096},
}
CACHE_ROUTERS = ("prefix_affinity", "cache_aware", "session_affinity")


def generated_fleet(replicas: int) -> dict:
    """A one-region fleet of ``replicas`` H100s, 8 to a node (fewer when the fleet is smaller)."""
    per_node = min(replicas, 8)
    if replicas % per_node:
        raise ValueError(f"fleet size {replicas} is not a whole number of {per_node}-GPU nodes")
    rack = {"name": "rack", "count": 1, "nodes": replicas // per_node, "device": "H100", "devices_per_node": per_node}
    return {
        "name": f"generated-{replicas}",
        "model": "llama-3-8b",
        "providers": [{"name": "aws", "regions": [{"name": "us-east-1", "zones": [{"name": "az1", "racks": [rack]}]}]}],
    }


def fleet_scenario(
    requests: int,
    load: float,
    seed: int,
    failures: bool = False,
    topology: dict | None = None,
    routing: str = "power_of_two",
    cache: bool = False,
    queue: bool = False,
) -> Scenario:
    """The benchmark scenario: duration chosen so that about ``requests`` arrive at ``load`` of the
    fleet's capacity; ``cache`` adds the prefix workload and prefix caching (at the same share of
    the capacity for its longer prompts), ``queue`` the gateway queue with its default slots
    (each replica's ``max_num_seqs``)."""
    base = {
        "name": "sim-throughput",
        "topology": topology if topology is not None else str(FLEET),
        "workload": {
            "arrival": {"kind": "poisson", "rate": 1.0},
            "prompt_tokens": {"kind": "lognormal", "median": 512, "sigma": 0.6, "max": 4096},
            "output_tokens": {"kind": "uniform", "low": 32, "high": 256},
        },
        "serving": {
            "batching": {"policy": "continuous", "max_num_seqs": 128},
            "routing": {"policy": routing},
        },
        "duration": 1.0,
        "seed": seed,
        "timeseries_interval": 10.0,
    }
    if cache:
        base["workload"]["prefix"] = PREFIXES
        base["serving"]["batching"]["prefix_caching"] = True
    rate = load * fleet_capacity(_capacity_probe(base, cache))
    base["workload"]["arrival"]["rate"] = rate
    base["duration"] = requests / rate
    if failures:
        base["faults"] = FAILURES
    if queue:
        base["serving"]["queue"] = {"enabled": True}
    return Scenario.model_validate(base)


def _capacity_probe(base: dict, cache: bool) -> Scenario:
    """The scenario whose analytic capacity sets the arrival rate.

    A request of the prefix workload carries a system prompt and its chat so far: its prompts
    are three times the plain workload's (1,810 tokens on average against 613). At the plain
    workload's rate the fleet is past capacity — latency climbs through the run and requests
    time out — so the capacity is taken at the prompts' drawn mean length instead (all of it
    computed: a conservative bound, since cached blocks still hold KV memory but skip prefill).
    """
    probe = Scenario.model_validate(base | {"workload": base["workload"] | {"prefix": None}})
    if not cache:
        return probe
    sample = {**base, "duration": 20_000 / fleet_capacity(probe)}
    sample["workload"] = base["workload"] | {"arrival": {"kind": "poisson", "rate": fleet_capacity(probe)}}
    prompts = draw(Scenario.model_validate(sample)).arrivals.prompt_tokens
    fixed = {"kind": "fixed", "value": max(1, round(float(prompts.mean())))}
    return Scenario.model_validate(base | {"workload": base["workload"] | {"prefix": None, "prompt_tokens": fixed}})


def cpu_timed(scenario: Scenario) -> tuple[Result, float]:
    """The run and the CPU seconds it took (the records and report tables included)."""
    started = time.process_time()
    result = simulate(scenario)
    return result, time.process_time() - started


# The size table measures a window of steady state: a fleet starts empty, and until its batches
# have filled (about the longest request, ~4 simulated s here) each request costs more, because
# small batches mean more iterations per token. A fixed number of requests would measure a large
# fleet only in that ramp, which once made cost look like it grew with the fleet.
WARM_UP_S = 4.0
MIN_WINDOW_S = 3.0
SAMPLE_S = 0.5


class _Window:
    """A run's progress callback (called every :data:`SAMPLE_S` simulated s) that notes the CPU
    time at the start and the end of the window and, if asked, profiles the window alone."""

    def __init__(self, starts: float, ends: float, profile: bool) -> None:
        self.starts, self.ends = starts, ends
        self.profiler = cProfile.Profile() if profile else None
        self.samples = 0
        self.cpu: list[float] = []

    def __call__(self, _done: float) -> None:
        self.samples += 1
        at = self.samples * SAMPLE_S
        if math.isclose(at, self.starts) or math.isclose(at, self.ends):
            self.cpu.append(time.process_time())
            if self.profiler is not None:
                self.profiler.enable() if len(self.cpu) == 1 else self.profiler.disable()

    def calls(self) -> int:
        assert self.profiler is not None
        return sum(calls for _, calls, _, _, _ in pstats.Stats(self.profiler).stats.values())  # type: ignore[attr-defined]


def cost_per_request(
    requests: int,
    load: float,
    seed: int,
    replicas: int,
    routing: str,
    cache: bool = False,
    profile: bool = False,
    queue: bool = False,
) -> float:
    """Steady-state CPU µs per request on a generated fleet of ``replicas`` — or, with
    ``profile``, Python calls per request (cProfile's count; its own overhead spoils the time).

    The window starts after :data:`WARM_UP_S` and holds at least ``requests`` arrivals and
    :data:`MIN_WINDOW_S`; cost is the CPU time in it over the requests that arrived in it. CPU
    time rather than wall time, because on a loaded machine the wall clock mostly measures the
    other processes."""
    probe = fleet_scenario(requests, load, seed, topology=generated_fleet(replicas), routing=routing, cache=cache, queue=queue)
    window = math.ceil(max(MIN_WINDOW_S, probe.duration) / SAMPLE_S) * SAMPLE_S
    scenario = probe.model_copy(update={"duration": WARM_UP_S + window, "timeseries_interval": SAMPLE_S})
    marks = _Window(WARM_UP_S, scenario.duration, profile)
    result = simulate(scenario, progress=marks)
    arrivals = result.requests["arrival"]
    counted = int(((arrivals >= WARM_UP_S) & (arrivals < scenario.duration)).sum())
    if profile:
        return marks.calls() / counted
    started, ended = marks.cpu
    return (ended - started) / counted * 1e6


def size_table(
    requests: int, load: float, seed: int, policies: list[tuple[str, bool]], customers: int, queue: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Steady-state cost per request (µs) per fleet size (rows) and routing policy (columns; with
    the prefix workload where the flag says so), beside the first policy's Python calls per
    request and a bare SimPy M/M/c queue's cost per customer with as many servers; the last row
    is each column's largest fleet against its smallest."""
    costs = {(p, c): [cost_per_request(requests, load, seed, n, p, c, queue=queue) for n in FLEET_SIZES] for p, c in policies}
    # The work itself, apart from what the machine's caches make of it: Python calls per request
    # with the first policy (flat when nothing per request is O(replicas)).
    first = policies[0]
    calls = [cost_per_request(requests, load, seed, n, *first, profile=True, queue=queue) for n in FLEET_SIZES]
    # And what SimPy itself makes of more at once: a bare M/M/c queue with a server per replica
    # does O(1) work per customer, yet its cost grows with c as the event heap and the live
    # state outgrow the CPU's caches.
    bare = [1e6 / mmc_customers_per_second(customers, servers=n, clock=time.process_time) for n in FLEET_SIZES]
    header = [
        "replicas",
        "bare M/M/c CPU µs/customer (c = replicas)",
        f"{first[0]} Python calls/request",
        *(f"{p}{' + prefixes' if c else ''}{' + queue' if queue else ''} CPU µs/request" for p, c in policies),
    ]
    rows = [
        [f"{n:,}", f"{bare[i]:.1f}", f"{calls[i]:.0f}", *(f"{costs[k][i]:.1f}" for k in policies)]
        for i, n in enumerate(FLEET_SIZES)
    ]
    ratio = [f"{bare[-1] / bare[0]:.2f}×", f"{calls[-1] / calls[0]:.2f}×", *(f"{costs[k][-1] / costs[k][0]:.2f}×" for k in policies)]
    rows.append([f"{FLEET_SIZES[-1]:,} / {FLEET_SIZES[0]}", *ratio])
    for line in table(header, rows).splitlines():
        print(line)
    return header, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--load", type=float, default=0.7, help="offered load as a share of fleet capacity")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--failures", action="store_true", help="also run with a node-crash process and compare")
    parser.add_argument("--cache", action="store_true", help="also run with shared prefixes and prefix caching and compare")
    parser.add_argument("--fleet-sizes", action="store_true", help="also print cost per request for fleets of 2 to 2,304 replicas")
    parser.add_argument("--policies", action="store_true", help="the fleet-size table once per routing policy in the registry")
    parser.add_argument("--queue", action="store_true", help="the fleet-size table with the gateway queue on")
    parser.add_argument("--table-requests", type=int, default=20_000, help="requests at least in each cell's steady-state window")
    parser.add_argument("--customers", type=int, default=100_000, help="customers of the bare M/M/4 queue")
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the figures into this docs page (docs/benchmarks.md)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    ratio = "not measured (no --failures)"
    # The yardstick is run before and after the simulator, so a change of load during the run
    # shows as a spread between the two instead of silently skewing the ratio.
    bare_before = mmc_customers_per_second(args.customers)
    scenario = fleet_scenario(args.requests, args.load, args.seed)
    result, cpu_plain = cpu_timed(scenario)
    bare_after = mmc_customers_per_second(args.customers)
    bare = (bare_before + bare_after) / 2
    # Peak RSS of the plain run alone: the variants below run in the same process while its
    # result is still held, so the process's later high-water mark is not one run's.
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The variants are compared with the plain run in CPU time per request: runs one after the
    # other on a shared machine see different loads, which swing wall-clock ratios by 1.5x.
    rate_plain = len(result.requests) / cpu_plain
    if args.failures:
        faulty, cpu_faulty = cpu_timed(fleet_scenario(args.requests, args.load, args.seed, failures=True))
        n_faulty = len(faulty.requests)
        rate_faulty = n_faulty / cpu_faulty
        ratio = f"{rate_faulty / rate_plain:.2f} × ({faulty.stats['faults']} node crashes)"
        print(
            f"with failures: {faulty.stats['faults']} node crashes, outcomes "
            f"{faulty.requests['status'].value_counts().to_dict()}; {rate_faulty:.0f} req per CPU s vs {rate_plain:.0f} "
            f"fault-free: ratio {rate_faulty / rate_plain:.2f}"
        )
    cache_ratio = "not measured (no --cache)"
    if args.cache:
        cached, cpu_cached = cpu_timed(fleet_scenario(args.requests, args.load, args.seed, routing="prefix_affinity", cache=True))
        rate_cached = len(cached.requests) / cpu_cached
        hit = cached.requests["cached_tokens"].sum() / cached.requests["prompt_tokens"].sum()
        cache_ratio = f"{rate_cached / rate_plain:.2f} × (hit rate {hit:.0%})"
        print(
            f"with the cache model (prefixes, prefix caching, prefix_affinity routing): hit rate {hit:.1%}, outcomes "
            f"{cached.requests['status'].value_counts().to_dict()}; {rate_cached:.0f} req per CPU s vs {rate_plain:.0f} "
            f"without: ratio {rate_cached / rate_plain:.2f}"
        )
    n = len(result.requests)
    wall = result.stats["wall_s"]
    counts = result.requests["status"].value_counts().to_dict()
    print(f"fleet: {scenario.topology.name}, offered {scenario.workload.arrival.rate:,.0f} req/s "
          f"for {scenario.duration:,.1f} simulated s; outcomes {counts}; preemptions {result.stats['preemptions']}")
    print(f"bare SimPy M/M/4 (rho 0.9, {args.customers:,} customers): {bare:,.0f} customers/s "
          f"(before {bare_before:,.0f}, after {bare_after:,.0f}); "
          f"simulator / bare queue = {n / wall / bare:.3f}")
    print(f"requests={n} wall_s={wall:.3f} requests_per_s={n / wall:.0f} bare_queue_per_s={bare:.0f} "
          f"ratio={n / wall / bare:.4f} peak_rss_mb={peak_rss_mb:.1f}")
    sizes = None
    if args.fleet_sizes or args.policies:
        policies = [(p, False) for p in ROUTERS] + [(p, True) for p in CACHE_ROUTERS] if args.policies else [("power_of_two", False)]
        print(f"cost per request, {args.table_requests:,} requests per cell at load {args.load}:")
        sizes = size_table(args.table_requests, args.load, args.seed, policies, args.customers, args.queue)
    if args.markdown:
        rows = [[f"{n:,}", f"{n / wall:,.0f} ({wall:.1f} s)", f"{bare:,.0f}", f"{n / wall / bare:.3f}", ratio,
                 cache_ratio, f"{peak_rss_mb:.0f} MB"]]
        body = table(["requests", "simulated requests/s", "bare M/M/4 customers/s", "ratio", "with failures",
                      "with the cache model", "peak RSS (plain run)"], rows)
        write_block(args.markdown, "sim_throughput", body + "\n\n" + provenance(load_before))
        if sizes is not None:  # a block of its own: the table is often measured in a run of its own
            write_block(args.markdown, "sim_throughput_sizes", table(*sizes) + "\n\n" + provenance(load_before))


if __name__ == "__main__":
    main()
