"""Direct timers on SimPy's event heap: a callback at a time, cancellable, and nothing more.

``env.timeout(delay).callbacks.append(lambda _event: f())`` costs a :class:`simpy.Timeout` (an
event with a value, a delay and a description), a closure and a callback list per timer, and a
timer that is no longer wanted — a decode stretch cut short, an iteration re-timed — still fires
its callback only to be told that it is stale. The simulator sets a few timers per request, so
that overhead is a large share of its time.

A :class:`Timer` is the least object SimPy's kernel processes: ``Environment.step`` reads only an
event's ``callbacks`` and ``_ok``. It goes on the same heap through :meth:`Environment.schedule`,
ordered by the same (time, priority, insertion) key as a ``Timeout`` scheduled at the same moment,
so swapping one for the other leaves the order of events — and so the records — unchanged. A
cancelled timer stays on the heap (a heap cannot drop an entry cheaply) but is popped with no
callbacks to call.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy
from simpy.events import NORMAL, URGENT

Callback = Callable[["Timer"], None]

__all__ = ["NORMAL", "URGENT", "Callback", "Timer"]


class Timer:
    """Calls ``callback(timer)`` at ``env.now + delay`` unless :meth:`cancel` is called first.

    ``priority`` is SimPy's: ``NORMAL`` as a ``Timeout`` has, or ``URGENT`` where a process's
    start (SimPy's ``Initialize``) was replaced by a timer, so it keeps its place among the
    other processes' starts.
    """

    __slots__ = ("callbacks", "_ok")

    def __init__(self, env: simpy.Environment, delay: float, callback: Callback, priority: int = NORMAL) -> None:
        self.callbacks: list[Callback] | None = [callback]
        self._ok = True  # what the kernel checks after the callbacks: a timer never fails
        env.schedule(self, priority, delay)  # type: ignore[arg-type]  # the kernel needs only the two slots

    def cancel(self) -> None:
        """Do nothing when due (a no-op once it has fired)."""
        if self.callbacks:
            self.callbacks = []
