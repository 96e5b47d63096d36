"""One vocabulary for how an attempt and a request end, shared by every layer and both planes.

An **attempt** (one try of a request on one replica) ends with an :class:`Outcome`; a
**request** ends with a :class:`Status`, which is what its record says. The spec (which outcomes
are retried), the policies (what a breaker counts), the records, the live gateway's metrics
and the simulator all use these names, so the same event cannot mean one thing in simulation
and another live.

Rules:

* ``client_error`` is the request's own fault — a prompt that does not fit the context, an
  unknown model, a malformed body (an HTTP 4xx other than 408 and 429). The replica worked, so
  breakers and outlier ejection count it as a *success*: five over-long prompts must not open a
  healthy replica's breaker. Sending the same request elsewhere cannot help, so it is never
  retried, and the request ends ``client_error``, which counts neither for nor against
  availability (the client asked for something no replica could give).
* ``unavailable`` is a connection that could not be made (refused, or not answered within the
  connect timeout): passive evidence that the replica is down, acted on at once.
* ``failed`` and ``timeout`` are the replica's (or the path's) fault and count against it.

:func:`classify` is the one mapping from an HTTP status to an outcome.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How one attempt ended (a ``str``: compares equal to its name)."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    CLIENT_ERROR = "client_error"


class Status(StrEnum):
    """How a request ended: the ``status`` column of its record."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SHED = "shed"
    CLIENT_ERROR = "client_error"


# Outcomes a retry may follow (the spec's ``retries.on`` takes a subset of these).
RETRYABLE = (Outcome.FAILED, Outcome.TIMEOUT, Outcome.UNAVAILABLE)
# Outcomes that count as the replica working, for breakers and outlier ejection.
REPLICA_SUCCESS = frozenset({Outcome.OK, Outcome.CLIENT_ERROR})
# Statuses that are the serving stack's errors (the SLA's error_rate).
ERRORS = (Status.FAILED, Status.TIMEOUT)


def classify(http_status: int) -> Outcome:
    """The outcome of an attempt the replica answered with ``http_status``.

    2xx is ``ok``; 408 and 504 (the replica gave up on the deadline) are ``timeout``; 429
    (overloaded) and every other 5xx are ``failed``; any other 4xx is ``client_error``.
    """
    if 200 <= http_status < 300:
        return Outcome.OK
    if http_status in (408, 504):
        return Outcome.TIMEOUT
    if 400 <= http_status < 500 and http_status != 429:
        return Outcome.CLIENT_ERROR
    return Outcome.FAILED
