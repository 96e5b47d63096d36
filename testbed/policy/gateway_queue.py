"""The gateway's central queue (late binding): hold a request until some replica has a free slot.

Binding each request to a replica's own queue on arrival (what the routers alone do) makes a
fleet of c replicas c separate queues: a request can wait behind a long one while another
replica idles, and a replica that dies takes its queue with it. Holding requests at the gateway
and dispatching one whenever a slot frees makes the fleet one queue with c servers — M/M/c when
arrivals are Poisson and service exponential, which is how ``tests/test_gateway_queue.py``
checks it against Erlang C. Production counterparts: the flow control of the Gateway API
inference extension (llm-d), Ray Serve's ``max_queued_requests``, Triton's queue policy.

Rules:

* **Order.** The most important priority (lowest number) first. Within a priority, the classes
  with waiting requests take turns (round robin, so a flood of one class cannot starve another
  of the same priority); within a class, first come first served.
* **Shedding.** An arrival that finds ``max_length`` requests waiting is shed at once; a request
  that has waited ``max_wait`` is shed then (the gateway sets a timer for it).
* The queue holds request ids only; the :class:`~testbed.policy.gateway.Gateway` decides when a
  slot is free and routes the request it pops.
"""

from __future__ import annotations

from collections import deque

from testbed.spec import QueueSpec


class GatewayQueue:
    """Waiting requests by priority, then class in turn, then arrival (see module docstring)."""

    def __init__(self, max_wait: float | None = None, max_length: int | None = None) -> None:
        self.max_wait = max_wait
        self.max_length = max_length
        self._queues: dict[int, dict[int, deque[int]]] = {}  # priority -> class -> rids, FIFO
        self._turns: dict[int, deque[int]] = {}  # priority -> classes with waiting requests, next first
        self._where: dict[int, tuple[int, int]] = {}  # waiting rid -> (priority, class)

    @classmethod
    def from_spec(cls, spec: QueueSpec) -> GatewayQueue:
        return cls(spec.max_wait, spec.max_length)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, rid: int) -> bool:
        return rid in self._where

    def push(self, rid: int, priority: int, request_class: int) -> bool:
        """Queue ``rid``; False if the queue is full (the request is to be shed)."""
        if self.max_length is not None and len(self._where) >= self.max_length:
            return False
        classes = self._queues.setdefault(priority, {})
        waiting = classes.get(request_class)
        if waiting is None:
            waiting = classes[request_class] = deque()
        if not waiting:
            self._turns.setdefault(priority, deque()).append(request_class)
        waiting.append(rid)
        self._where[rid] = (priority, request_class)
        return True

    def push_front(self, rid: int, priority: int, request_class: int) -> None:
        """Put back a request that was popped but could not be placed: it keeps its turn."""
        classes = self._queues.setdefault(priority, {})
        waiting = classes.setdefault(request_class, deque())
        turns = self._turns.setdefault(priority, deque())
        if not waiting:
            turns.appendleft(request_class)
        elif turns and turns[-1] == request_class:
            turns.rotate(1)  # pop moved its class to the back; give the turn back
        waiting.appendleft(rid)
        self._where[rid] = (priority, request_class)

    def pop(self) -> int | None:
        """The next request to dispatch, or None if none waits."""
        if not self._where:
            return None
        priority = min(p for p, turns in self._turns.items() if turns)
        turns = self._turns[priority]
        request_class = turns.popleft()
        waiting = self._queues[priority][request_class]
        rid = waiting.popleft()
        if waiting:
            turns.append(request_class)
        del self._where[rid]
        return rid

    def remove(self, rid: int) -> bool:
        """Take ``rid`` out (its deadline passed, or it waited too long); False if it was not waiting."""
        where = self._where.pop(rid, None)
        if where is None:
            return False
        priority, request_class = where
        waiting = self._queues[priority][request_class]
        waiting.remove(rid)
        if not waiting:
            self._turns[priority].remove(request_class)
        return True
