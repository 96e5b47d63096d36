"""Observing a run as an on-call engineer's tools would: windowed metrics, Prometheus and
OpenTelemetry export, detectors, root-cause ranking and the scorecard against injected faults.

Everything here reads only records, so simulated and live runs are observed alike. A regular
package (not a namespace one) so that a non-editable install ships it and the API reference finds it.
"""
