"""The live gateway's spans under the trace setting: real replica processes, real HTTP, real OTel SDK.

Two tiny-model replicas; after the first requests r0 answers every attempt with a 503, so the
requests routed to it are retried on r1. The gateway's exporter is the sampling one; a second
span processor on the same tracer provider sees every span, which is what sampling is checked
against.
"""

from __future__ import annotations

from collections import Counter

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from testbed.live.stack import LiveStack, ReplicaPlan, StackThread
from testbed.live.trace_sampling import SampledSpanExporter
from testbed.observe.sampling import TraceSampler, in_share
from testbed.spec import ServingSpec

pytestmark = pytest.mark.live

SPEC = ServingSpec.model_validate({
    "batching": {"policy": "micro", "max_batch_size": 4},
    "retries": {"max_attempts": 2, "backoff": "10ms", "budget_min_per_s": 100},
    "health_check": {"period": "120s"},
    "circuit_breaker": {"enabled": False},
    "outlier_ejection": {"enabled": False},
})
SAMPLER = TraceSampler("sampled", 0.25, seed=3)


def roots(spans) -> dict[int, object]:
    return {s.attributes["testbed.request_id"]: s for s in spans if s.parent is None}


def test_the_live_gateway_traces_every_retried_request_and_the_seeded_share_of_the_rest():
    kept = InMemorySpanExporter()
    every = InMemorySpanExporter()
    thread = StackThread(LiveStack(SPEC, [ReplicaPlan("r0", "local/a"), ReplicaPlan("r1", "local/a")], seed=3,
                                   span_exporter=SampledSpanExporter(kept, SAMPLER)))
    with thread as stack:
        stack.gateway.tracer_provider.add_span_processor(SimpleSpanProcessor(every))
        with httpx.Client(base_url=stack.gateway_url, timeout=30) as http:
            def send(rid: int) -> None:
                response = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2},
                                     headers={"x-request-id": str(rid)})
                assert response.status_code == 200, response.text

            for rid in range(40):
                send(rid)
            thread.run(stack.chaos("r0", error_rate=1.0, error_status=[503]))
            for rid in range(100, 116):
                send(rid)
    seen = roots(every.get_finished_spans())
    assert set(seen) == set(range(40)) | set(range(100, 116))
    retried = {rid for rid, span in seen.items() if span.attributes["testbed.retries"] > 0}
    assert retried and retried <= set(range(100, 116))
    ids = np.array(sorted(seen))
    expected = retried | set(ids[in_share(ids, SAMPLER.share, SAMPLER.seed)].tolist())
    assert 0 < len(expected - retried) < len(ids) - len(retried)  # some of the rest traced, not all
    assert set(roots(kept.get_finished_spans())) == expected
    # Whole traces: a kept request's attempt spans (the failed one too) come with it.
    per_trace = Counter(s.context.trace_id for s in every.get_finished_spans())
    kept_per_trace = Counter(s.context.trace_id for s in kept.get_finished_spans())
    assert all(kept_per_trace[t] == per_trace[t] for t in kept_per_trace)
    assert any(s.attributes.get("testbed.outcome") == "failed" for s in kept.get_finished_spans())
    # all and none, over the same real spans.
    for mode, want in (("all", set(seen)), ("none", set())):
        out = InMemorySpanExporter()
        SampledSpanExporter(out, TraceSampler(mode, seed=3)).export(every.get_finished_spans())
        assert set(roots(out.get_finished_spans())) == want

