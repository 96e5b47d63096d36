"""Prometheus metrics of one replica, under vLLM's names so dashboards and scrapers work unchanged.

Each app gets its own registry (several replicas can live in one test process). Gauges read the
engine when scraped; latency histograms are fed by the server per request; the batch histograms
are fed by the engine as it forms each batch, and the prefix-cache counters (in tokens, as
vLLM's) as it looks each prompt up.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# vLLM's bucket boundaries (seconds), so histograms compare across engines.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ReplicaMetrics:
    def __init__(self, engine, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        reg = self.registry
        self._running = Gauge("vllm:num_requests_running", "Requests in the running batch.", labels, registry=reg)
        self._waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for a batch.", labels, registry=reg)
        self._running.labels(model_name).set_function(lambda: engine.batch_size)
        self._waiting.labels(model_name).set_function(lambda: engine.queued)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=TTFT_BUCKETS, registry=reg).labels(model_name)
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "Interval between output tokens.", labels,
                              buckets=TPOT_BUCKETS, registry=reg).labels(model_name)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", labels,
                             buckets=E2E_BUCKETS, registry=reg).labels(model_name)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed.", labels,
                                     registry=reg).labels(model_name)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", labels,
                                         registry=reg).labels(model_name)
        self._success = Counter("vllm:request_success", "Requests finished, by finish reason.",
                                labels + ["finished_reason"], registry=reg)
        self._model = model_name
        self.batch_size = Histogram("testbed:batch_size", "Sequences per batch at formation.", labels,
                                    buckets=BATCH_BUCKETS, registry=reg).labels(model_name)
        self.batching_delay = Histogram("testbed:batching_delay_seconds",
                                        "How long a batch's oldest request waited for it to form.", labels,
                                        buckets=DELAY_BUCKETS, registry=reg).labels(model_name)
        self.prefix_cache_queries = Counter("vllm:prefix_cache_queries",
                                            "Prefix cache queries, in terms of number of queried tokens.", labels,
                                            registry=reg).labels(model_name)
        self.prefix_cache_hits = Counter("vllm:prefix_cache_hits",
                                         "Prefix cache hits, in terms of number of cached tokens.", labels,
                                         registry=reg).labels(model_name)
        self._int8 = Gauge("testbed:weights_int8", "1 while the replica serves from int8 weights, else 0.", labels,
                           registry=reg)
        self._int8.labels(model_name).set_function(lambda: float(engine.weights == "int8"))
        engine.batch_listeners.append(self.observe_batch)
        engine.cache_listeners.append(self.observe_prefix_cache)

    def observe_batch(self, size: int, delay: float) -> None:
        self.batch_size.observe(size)
        self.batching_delay.observe(delay)

    def observe_prefix_cache(self, queried: int, hit: int) -> None:
        """One prompt looked up in the prefix cache: its tokens, and how many were cached."""
        self.prefix_cache_queries.inc(queried)
        self.prefix_cache_hits.inc(hit)

    def observe_token(self, interval: float) -> None:
        """Time since the previous output token of the same request."""
        self.tpot.observe(interval)

    def observe_request(self, prompt_tokens: int, output_tokens: int, ttft: float | None, e2e: float,
                        finish_reason: str) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(output_tokens)
        if ttft is not None:
            self.ttft.observe(ttft)
        self.e2e.observe(e2e)
        self._success.labels(self._model, finish_reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
