"""Requests as OpenTelemetry traces, made with the OpenTelemetry SDK from the records.

Each exported request is one trace: a CLIENT span named as the GenAI semantic conventions ask
(``{gen_ai.operation.name} {gen_ai.request.model}``, with ``gen_ai.usage.*`` token counts and
``error.type``), a SERVER span for the gateway, one span per attempt — retries and hedges are
their own spans, from the attempt records — and, under the attempt that answered, a
``queue+prefill`` span up to the first token and a ``decode`` span after it. The records do not
split queueing from prefill, so neither do the spans.

Which requests are exported is :class:`~testbed.observe.sampling.TraceSampler`'s decision
(``observability.traces``): by default every request that failed, retried, hedged, migrated,
failed over or was degraded, plus a seeded share of the rest. Span and trace ids come from the
seed too, so the same seed writes the same file. The file exporter writes OTLP/JSON
(``ExportTraceServiceRequest`` per line, one trace per line); tests use the SDK's in-memory one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from testbed.observe.prometheus import model_name
from testbed.observe.sampling import TraceSampler, notable_requests
from testbed.records.schema import string_values
from testbed.topology import Topology

if TYPE_CHECKING:
    from testbed.records.result import Result

NS = 1_000_000_000
SEPARATORS = (",", ":")
STATUS_CODES = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
UNSET = Status(StatusCode.UNSET)
OTLP_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}


class SeededIds(IdGenerator):
    """Trace and span ids from a seeded stream: the same run exports the same ids."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1


def run_sampler(result: Result) -> TraceSampler:
    """The run's own trace setting (``observability.traces`` and ``trace_sample``, its seed)."""
    return TraceSampler.of(result.scenario.observability, result.seed)


def traced_requests(result: Result, sampler: TraceSampler | None = None) -> pd.DataFrame:
    """The requests to export under ``sampler`` (default the run's own setting)."""
    sampler = sampler or run_sampler(result)
    requests = result.requests
    return requests[sampler.keep(requests["request_id"].to_numpy(), notable_requests(requests, result.attempts))]


def emit_spans(result: Result, exporter: SpanExporter, sampler: TraceSampler | None = None) -> int:
    """Export the traced requests' spans through ``exporter``, a trace at a time; returns how many requests.

    The spans are the SDK's own :class:`ReadableSpan` records, made finished: a run's requests
    are over, so nothing needs a live span, a context or a span processor (through a tracer, a
    trace took four times as long: 0.29 ms against 0.07 ms on the baseline, encoding included).
    Ids are drawn in the order a tracer draws them (the trace id, then each span's id as it
    starts), so the spans are those a ``TracerProvider`` with :class:`SeededIds` makes.
    """
    scenario = result.scenario
    # The SDK gives every process a random service.instance.id; the run's own keeps the file a function of the seed.
    resource = Resource.create({"service.name": "testbed-gateway", "service.instance.id": f"{scenario.name}/seed-{result.seed}",
                                "testbed.scenario": scenario.name, "testbed.seed": result.seed})
    spans = _Spans(resource, InstrumentationScope("testbed.observe.traces"), SeededIds(result.seed))
    requests = traced_requests(result, sampler)
    attempts = result.attempts.groupby("request_id", sort=False) if not result.attempts.empty else None
    attempt_ids = set(result.attempts["request_id"].tolist()) if attempts is not None else set()
    names = [r.name for r in Topology.from_spec(scenario.topology).replicas]
    model = model_name(result)
    for row in requests.itertuples(index=False):
        rows = attempts.get_group(row.request_id) if row.request_id in attempt_ids else None
        exporter.export(_request_trace(spans, row, rows, names, model))
    exporter.shutdown()
    return len(requests)


def _ns(seconds: float) -> int:
    return int(round(seconds * NS))


class _Spans:
    """Makes finished spans of one resource and scope, with ids from ``ids``."""

    def __init__(self, resource: Resource, scope: InstrumentationScope, ids: IdGenerator) -> None:
        self.resource, self.scope, self.ids = resource, scope, ids

    def context(self, trace_id: int | None = None) -> SpanContext:
        """A new span's context: in trace ``trace_id``, or the first span of a new trace."""
        trace_id = self.ids.generate_trace_id() if trace_id is None else trace_id
        return SpanContext(trace_id, self.ids.generate_span_id(), is_remote=False, trace_flags=SAMPLED)

    def span(self, name: str, context: SpanContext, parent: SpanContext | None, start: int, end: int, *,
             kind: SpanKind = SpanKind.INTERNAL, attributes: dict | None = None, status: Status = UNSET) -> ReadableSpan:
        return ReadableSpan(name, context, parent, self.resource, attributes, kind=kind, status=status, start_time=start,
                            end_time=end, instrumentation_scope=self.scope)


def _request_trace(spans: _Spans, row, attempts: pd.DataFrame | None, names: Sequence[str], model: str) -> list[ReadableSpan]:
    """One request's spans, children before their parents (the order in which they end)."""
    ok = row.status == "ok"
    attributes = {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": "testbed",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": int(row.prompt_tokens),
        "testbed.request_id": int(row.request_id),
        "testbed.request_class": str(row.request_class),
        "testbed.client_region": str(row.client_region),
        "testbed.status": str(row.status),
    }
    if ok:
        attributes["gen_ai.usage.output_tokens"] = int(row.output_tokens)
        attributes["gen_ai.response.finish_reasons"] = ("length",)
    else:
        attributes["error.type"] = str(row.status)
    if row.session_id >= 0:
        attributes |= {"gen_ai.conversation.id": str(row.session_id), "testbed.agent.stage": str(row.stage), "testbed.agent.turn": int(row.turn)}
    start, end = _ns(row.arrival), _ns(row.finish)
    root = spans.context()
    gateway = spans.context(root.trace_id)
    out: list[ReadableSpan] = []
    if attempts is None:  # one attempt, and it answered (else it would be in the attempt records)
        plan = [(row.arrival, row.finish, int(row.replica), "ok" if ok else str(row.status), False)]
    else:
        plan = list(zip(attempts["start"], attempts["end"], attempts["replica"], string_values(attempts["outcome"]), attempts["hedge"]))
    for number, (a_start, a_end, replica, outcome, hedge) in enumerate(plan):
        kind = "hedge" if hedge else ("retry" if number else "attempt")
        attempt = spans.context(root.trace_id)
        if outcome == "ok" and ok and row.first_token == row.first_token:
            first = min(max(row.first_token, a_start), a_end)
            prefill, decode = spans.context(root.trace_id), spans.context(root.trace_id)
            out.append(spans.span("queue+prefill", prefill, attempt, _ns(a_start), _ns(first)))
            out.append(spans.span("decode", decode, attempt, _ns(first), _ns(a_end)))
        out.append(spans.span(
            kind, attempt, gateway, _ns(a_start), _ns(a_end), kind=SpanKind.CLIENT,
            attributes={"testbed.attempt": number, "testbed.replica": names[replica] if replica >= 0 else "", "testbed.outcome": outcome},
            status=Status(StatusCode.ERROR, outcome) if outcome not in ("ok", "cancelled") else UNSET,
        ))
    gateway_attributes = {"testbed.retries": int(row.retries), "testbed.hedged": bool(row.hedged), "testbed.failed_over": bool(row.failed_over)}
    out.append(spans.span("gateway", gateway, root, start, end, kind=SpanKind.SERVER, attributes=gateway_attributes))
    out.append(spans.span(f"text_completion {model}", root, None, start, end, kind=SpanKind.CLIENT, attributes=attributes,
                          status=UNSET if ok else Status(StatusCode.ERROR, str(row.status))))
    return out


class OtlpJsonFileExporter(SpanExporter):
    """Collects spans and writes OTLP/JSON, one ``ExportTraceServiceRequest`` per trace per line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._traces: dict[int, list[ReadableSpan]] = {}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self._traces.setdefault(span.context.trace_id, []).append(span)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        heads: dict[tuple[int, int], str] = {}  # every trace of a run has the same resource and scope
        with self.path.open("w") as out:
            for spans in self._traces.values():
                first = spans[0]
                key = (id(first.resource), id(first.instrumentation_scope))
                if key not in heads:
                    heads[key] = _head(first)
                out.write(heads[key] + json.dumps([_span(s) for s in spans], separators=SEPARATORS)[1:] + "}]}]}\n")
        self._traces.clear()


def _head(span: ReadableSpan) -> str:
    """The start of an OTLP/JSON ``ExportTraceServiceRequest`` line for spans of ``span``'s
    resource and scope, up to its list of spans: the line is this, the spans, and its closing."""
    scope = span.instrumentation_scope
    resource = json.dumps({"attributes": _attributes(span.resource.attributes)}, separators=SEPARATORS)
    name = json.dumps({"name": scope.name if scope else ""}, separators=SEPARATORS)
    return f'{{"resourceSpans":[{{"resource":{resource},"scopeSpans":[{{"scope":{name},"spans":['


def _span(span: ReadableSpan) -> dict:
    encoded = {
        "traceId": f"{span.context.trace_id:032x}",
        "spanId": f"{span.context.span_id:016x}",
        "name": span.name,
        "kind": OTLP_KIND[span.kind],
        "startTimeUnixNano": str(span.start_time),
        "endTimeUnixNano": str(span.end_time),
        "attributes": _attributes(span.attributes or {}),
        "status": {"code": STATUS_CODES[span.status.status_code]},
    }
    if span.parent is not None:
        encoded["parentSpanId"] = f"{span.parent.span_id:016x}"
    if span.status.description:
        encoded["status"]["message"] = span.status.description
    return encoded


def _attributes(attributes) -> list[dict]:
    return [{"key": key, "value": _value(value)} for key, value in attributes.items()]


def _value(value) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (tuple, list)):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def write_traces(result: Result, path: str | Path) -> int:
    """Write traces.jsonl; returns the number of traced requests."""
    return emit_spans(result, OtlpJsonFileExporter(path))
