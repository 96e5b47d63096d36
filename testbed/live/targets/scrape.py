"""The target's own signals: its endpoints' Prometheus ``/metrics``, scraped during the run.

Every ``scrape_interval`` each endpoint's metrics page is read and its samples kept as rows
(time on the run's clock, endpoint, sample name, labels, value); a scrape that fails leaves an
``up`` of 0, as Prometheus records it. The rows are written beside the records
(``target_metrics.parquet``) and turned into what the project's detectors read:

* :func:`fleet_series` — the fleet time series in the simulator's schema, from vLLM's names:
  ``vllm:num_requests_waiting`` (queue depth), ``vllm:num_requests_running``,
  ``vllm:kv_cache_usage_perc`` (utilisation; where absent, whether anything ran), and the
  increases of ``vllm:request_success_total`` and ``vllm:generation_tokens_total`` per interval;
* :func:`up_changes` — each endpoint's ``up`` turning 0 and back, as health changes, so the
  health detector judges whether the user's own monitoring would have caught the fault.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from testbed.live.targets.spec import Endpoint

KEEP_PREFIXES = ("vllm:", "ray_serve_", "testbed:")
COLUMNS = {"time": "float64", "replica": "int32", "endpoint": "object", "metric": "object", "labels": "object", "value": "float64"}


class Scraper:
    """Scrapes the endpoints until stopped; ``rows`` holds every sample."""

    def __init__(self, endpoints: list[Endpoint], interval: float, clock: Callable[[], float]) -> None:
        self.endpoints, self.interval, self.clock = endpoints, interval, clock
        self.rows: list[tuple[float, int, str, str, str, float]] = []
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        targets = [(i, e) for i, e in enumerate(self.endpoints) if e.metrics is not None]
        if not targets:
            return
        async with httpx.AsyncClient(timeout=max(0.5, self.interval)) as client:
            while True:
                await asyncio.gather(*(self._scrape(client, i, e) for i, e in targets))
                if self._stop.is_set():
                    return  # the last scrape came after the stop: the state the run left behind
                try:
                    await asyncio.wait_for(self._stop.wait(), self.interval)
                except TimeoutError:
                    pass

    async def _scrape(self, client: httpx.AsyncClient, i: int, endpoint: Endpoint) -> None:
        t = self.clock()
        try:
            response = await client.get(endpoint.url + str(endpoint.metrics))
            ok = response.status_code == 200
            text = response.text if ok else ""
        except httpx.HTTPError:
            ok, text = False, ""
        self.rows.append((t, i, endpoint.name, "up", "{}", 1.0 if ok else 0.0))
        if ok:
            self.rows.extend((t, i, endpoint.name, name, labels, value) for name, labels, value in parse(text))

    def frame(self) -> pd.DataFrame:
        if not self.rows:
            return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in COLUMNS.items()})
        frame = pd.DataFrame(self.rows, columns=list(COLUMNS))
        return frame.astype(COLUMNS).sort_values(["time", "replica", "metric", "labels"], ignore_index=True)


def parse(text: str) -> list[tuple[str, str, float]]:
    """(sample name, labels as JSON, value) for the samples worth keeping; a bad page keeps nothing."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return []
    return [
        (sample.name, json.dumps(sample.labels, sort_keys=True), float(sample.value))
        for family in families
        for sample in family.samples
        if sample.name.startswith(KEEP_PREFIXES) and not sample.name.endswith("_created")  # creation times, not values
    ]


def _total(frame: pd.DataFrame, names: tuple[str, ...]) -> pd.Series:
    """Per (time, replica): the sum over labels of the first of ``names`` present."""
    for name in names:
        rows = frame[frame["metric"] == name]
        if not rows.empty:
            return rows.groupby(["time", "replica"])["value"].sum()
    return pd.Series(dtype=float)


def fleet_series(frame: pd.DataFrame, regions: list[str]) -> pd.DataFrame:
    """The fleet series (simulator schema) from the scraped vLLM metrics; empty without them."""
    up = frame[frame["metric"] == "up"].set_index(["time", "replica"])["value"]
    running = _total(frame, ("vllm:num_requests_running",))
    if running.empty:
        return pd.DataFrame()
    index = up.index
    get = lambda s: s.reindex(index)  # noqa: E731 - a local shorthand
    waiting = get(_total(frame, ("vllm:num_requests_waiting",))).fillna(0.0)
    run = get(running).fillna(0.0)
    usage = _total(frame, ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"))
    utilisation = get(usage) if not usage.empty else (run > 0).astype(float)
    out = pd.DataFrame({"queue_depth": waiting, "running": run, "utilisation": utilisation.fillna(0.0)}, index=index)
    for column, names in (("completed", ("vllm:request_success_total",)), ("output_tokens", ("vllm:generation_tokens_total",))):
        totals = get(_total(frame, names))
        # Increase per interval, per replica, counted from the first scrape; a counter that fell
        # or reappeared after failed scrapes was restarted, so it counts from zero.
        by_replica = totals.groupby(level="replica")
        delta = by_replica.diff()
        delta = delta.where(delta >= 0, totals).where(by_replica.cumcount() > 0, 0.0).fillna(0.0)
        out[column] = delta
    out = out.reset_index()
    out["region"] = pd.Categorical([regions[r] for r in out["replica"]], categories=list(dict.fromkeys(regions)))
    out = out.astype({"replica": "int32", "queue_depth": "int32", "running": "int32", "completed": "int64", "output_tokens": "int64"})
    return out[["time", "replica", "region", "queue_depth", "running", "utilisation", "completed", "output_tokens"]]


def up_changes(frame: pd.DataFrame) -> list[tuple[int, float, str]]:
    """(replica, time, 'unhealthy' | 'healthy') whenever a scrape's ``up`` changes."""
    up = frame[frame["metric"] == "up"].sort_values(["replica", "time"])
    changes = []
    for replica, rows in up.groupby("replica"):
        last = 1.0
        for t, value in zip(rows["time"].tolist(), rows["value"].tolist()):
            if value != last:
                changes.append((int(replica), float(t), "healthy" if value else "unhealthy"))
                last = value
    return sorted(changes, key=lambda c: (c[1], c[0]))
