"""The yardstick for simulator speed: a bare M/M/c queue in SimPy, as lean as SimPy allows.

Customers arrive in a Poisson stream, wait for one of ``c`` servers (a ``simpy.Resource``) and
hold it for an exponential service time. There is no gateway, no batching and no record beyond
a counter, so its customers per second is about the most any SimPy model does per arrival on
this machine. The simulator's requests per second divided by it — both measured in one process,
one after the other — is a figure that the machine's load mostly cancels out of.

Run alone: python benchmarks/bare_queue.py [--customers 100000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import simpy


def mmc_customers_per_second(
    customers: int = 100_000,
    servers: int = 4,
    rho: float = 0.9,
    seed: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Customers per second of ``clock`` (wall time unless told) of an M/M/``servers`` queue at
    utilisation ``rho``."""
    rng = random.Random(seed)
    env = simpy.Environment()
    pool = simpy.Resource(env, capacity=servers)
    service_rate = 1.0
    arrival_rate = rho * servers * service_rate
    done = 0

    def customer():
        nonlocal done
        with pool.request() as turn:
            yield turn
            yield env.timeout(rng.expovariate(service_rate))
        done += 1

    def arrivals():
        for _ in range(customers):
            yield env.timeout(rng.expovariate(arrival_rate))
            env.process(customer())

    env.process(arrivals())
    started = clock()
    env.run()
    wall = clock() - started
    assert done == customers, f"{customers - done} customers never left the queue"
    return customers / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args()
    print(f"bare SimPy M/M/4 (rho 0.9): {mmc_customers_per_second(args.customers):,.0f} customers/s")


if __name__ == "__main__":
    main()
