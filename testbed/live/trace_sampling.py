"""The live gateway's spans under the run's trace setting: tail sampling by request.

The gateway opens a ``gateway.request`` span per request and a ``gateway.attempt`` span per
attempt (:mod:`testbed.live.gateway`). Whether a request is worth a trace — failed, retried,
hedged, migrated, failed over, served by the fallback tier — is known only when it ends, so
:class:`SampledSpanExporter` holds each request's spans until its root span ends, asks the same
:class:`~testbed.observe.sampling.TraceSampler` the simulation's exporter asks, and passes the
whole trace on or drops it. The seeded share is by ``testbed.request_id``, so a live run traces
the ids the simulation of the same draw traces.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from testbed.observe.sampling import TraceSampler

DECISIONS_KEPT = 4096  # decided traces remembered, for a span that ends after its request (a late cancel)


class SampledSpanExporter(SpanExporter):
    """Passes to ``inner`` the spans of the requests ``sampler`` keeps, whole traces at a time."""

    def __init__(self, inner: SpanExporter, sampler: TraceSampler) -> None:
        self.inner, self.sampler = inner, sampler
        self._pending: dict[int, list[ReadableSpan]] = {}  # trace id -> spans ended before the root
        self._decided: OrderedDict[int, bool] = OrderedDict()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        out: list[ReadableSpan] = []
        for span in spans:
            trace_id = span.context.trace_id
            if trace_id in self._decided:
                if self._decided[trace_id]:
                    out.append(span)
            elif span.parent is not None:
                self._pending.setdefault(trace_id, []).append(span)
            else:
                held = self._pending.pop(trace_id, [])
                keep = self._decide(span, held)
                self._remember(trace_id, keep)
                if keep:
                    out += [*held, span]
        if not self.sampler.exports or not out:
            return SpanExportResult.SUCCESS
        return self.inner.export(out)

    def _decide(self, root: ReadableSpan, children: Sequence[ReadableSpan]) -> bool:
        attributes = root.attributes or {}
        notable = (
            attributes.get("testbed.status", "ok") != "ok"
            or int(attributes.get("testbed.retries", 0) or 0) > 0
            or any(bool(attributes.get(flag, False)) for flag in ("testbed.hedged", "testbed.failed_over", "testbed.fallback"))
            or any((c.attributes or {}).get("testbed.outcome", "ok") != "ok" for c in children)
        )
        request_id = attributes.get("testbed.request_id")
        if not isinstance(request_id, int):
            return self.sampler.mode != "none"  # not a request of the gateway's: nothing to sample it by
        return self.sampler.keeps(request_id, notable)

    def _remember(self, trace_id: int, keep: bool) -> None:
        self._decided[trace_id] = keep
        while len(self._decided) > DECISIONS_KEPT:
            self._decided.popitem(last=False)

    def shutdown(self) -> None:
        """Requests that never ended (the stack stopped first) are passed on: nothing says they went well."""
        held = [span for spans in self._pending.values() for span in spans]
        self._pending.clear()
        if held and self.sampler.exports:
            self.inner.export(held)
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
