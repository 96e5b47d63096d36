"""Start, stop, kill, pause and restart replica processes — each in its own process group.

Why process groups: a vLLM server forks an engine process and a worker; SIGKILL to the server
alone leaves both behind, holding gigabytes and the port. So every child is started with
``start_new_session=True`` (its pid is its process-group id) and every signal goes to the whole
group with :func:`os.killpg`. A pause is SIGSTOP to the group, as a hung host would look to the
gateway; a resume is SIGCONT.

Readiness is what the child says or what its ``/health`` answers: a line on stdout or stderr that
matches ``ready_pattern`` gives the URL (group 1), and with ``ready_url_health`` (or a ``url``
known in advance, as for vLLM on a chosen port) the supervisor then polls ``GET {url}/health``
until it answers 200. A child that exits first raises :class:`ReplicaStartError` with its exit
code and the tail of its output, so a broken replica explains itself.

Every change of a replica's state is also an event (:class:`ReplicaEvent`) given to ``on_event``:
``ready`` (with how long it was down, after a restart), ``died`` (its exit code or the signal that
ended it, seen by a thread that waits on the process, so a death nobody asked for is seen at once),
``stopped`` (by :meth:`Supervisor.stop`) and ``restarting``. ``testbed serve`` prints them.

The API is synchronous and thread-safe: the gateway and the fault injector live on their own
event loops and call it from threads. An ``atexit`` hook stops every group still running, so no
replica outlives a test run that ends in an exception.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

TAIL_LINES = 200  # kept per replica for error messages
HEALTH_POLL = 0.25  # seconds between /health probes while starting


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    """One change of a replica's state, as the supervisor saw it happen.

    ``kind`` is ``ready``, ``died``, ``stopped`` or ``restarting``. For ``died``, ``returncode``
    is the exit code, negative for the signal that ended it (as :class:`subprocess.Popen` has
    it) and ``expected`` says whether the supervisor itself sent the signal (a fault's kill).
    For ``ready`` after an end, ``down_s`` is how long the replica served nothing.
    """

    name: str
    kind: str
    pid: int
    at: float  # time.monotonic()
    returncode: int | None = None
    expected: bool = False
    down_s: float | None = None

    def describe(self) -> str:
        """One line for people: ``r0 died (SIGKILL)``, ``r0 ready again after 3.2 s``."""
        if self.kind == "died":
            code = self.returncode
            how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            return f"replica {self.name} died ({how}, pid {self.pid})"
        if self.kind == "ready":
            again = f" again after {self.down_s:.1f} s" if self.down_s is not None else ""
            return f"replica {self.name} ready{again} (pid {self.pid})"
        return f"replica {self.name} {self.kind} (pid {self.pid})"


EventCallback = Callable[[ReplicaEvent], None]


class ReplicaStartError(RuntimeError):
    """A replica exited, or never became ready, before its start-up deadline."""


@dataclass(eq=False)
class Managed:
    """One supervised process group: what was started and what became of it.

    ``state`` is ``starting``, ``ready``, ``paused``, ``stopped`` (by :meth:`Supervisor.stop`),
    ``killed`` (by :meth:`Supervisor.kill` with SIGKILL) or ``exited`` (any other end, seen when
    the state is read).
    """

    name: str
    argv: list[str]
    env: dict[str, str] | None
    ready_pattern: str
    ready_url_health: bool
    proc: subprocess.Popen[bytes] = field(repr=False)
    given_url: str | None = None  # the url passed to start(), kept for restart()
    url: str | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES), repr=False)
    _state: str = "starting"
    _ending: str | None = None  # what the supervisor is doing to end it ("stopped", "killed"), if anything
    _ready: threading.Event = field(default_factory=threading.Event, repr=False)
    _drains: list[threading.Thread] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session=True: the child leads its own group

    @property
    def state(self) -> str:
        if self._state in ("starting", "ready", "paused") and self.proc.poll() is not None:
            self._state = "exited"
        return self._state

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def output_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self.tail)[-lines:])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``.

    Read from /proc where there is one, because ``killpg(pgid, 0)`` also succeeds for zombies a
    container's init may never reap; elsewhere fall back to that probe.
    """
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    return [pid for pid, state in _member_states(pgid).items() if state != "Z"]


def _member_states(pgid: int) -> dict[int, str]:
    """pid -> /proc state letter (R, S, T, Z, ...) of every process in group ``pgid``."""
    states = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ... — comm may contain spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            states[int(entry.name)] = fields[0]
    return states


def _wait_stopped(pgid: int, timeout: float = 2.0) -> None:
    """SIGSTOP lands asynchronously: wait until every live member is stopped (state T)."""
    if not Path("/proc").is_dir():
        return
    deadline = time.monotonic() + timeout
    while any(state not in ("T", "t", "Z", "X") for state in _member_states(pgid).values()):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.005)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Supervisor:
    """Runs named replica processes; see the module docstring for the why."""

    def __init__(self, log_dir: Path | None = None, on_event: EventCallback | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.on_event = on_event  # called from the supervisor's threads; may be set after construction
        self._lock = threading.RLock()
        self._managed: dict[str, Managed] = {}
        self._ended: dict[str, float] = {}  # name -> when its last process ended, for "ready again after"
        _live_supervisors.add(self)

    # -- starting ---------------------------------------------------------------------------

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        ready_pattern: str = r"READY .*url=(\S+)",
        ready_url_health: bool = False,
        timeout: float = 60,
        url: str | None = None,
    ) -> Managed:
        """Start ``argv`` as replica ``name`` and return once it is ready.

        ``env`` is laid over this process's environment. ``url``, when the caller already knows
        where the child will listen, makes readiness a 200 from ``{url}/health`` alone (no line
        needed). Raises :class:`ReplicaStartError` if the child exits or is not ready within
        ``timeout`` seconds (it is then killed, group and all).
        """
        with self._lock:
            old = self._managed.get(name)
            if old is not None and old.proc.poll() is None:
                raise ValueError(f"replica {name!r} is already running (pid {old.pid})")
            managed = self._spawn(name, argv, env, ready_pattern, ready_url_health, url)
            self._managed[name] = managed
        try:
            self._await_ready(managed, timeout)
        except BaseException:
            self._end(managed, signal.SIGKILL, "killed", grace=0)
            raise
        now = time.monotonic()
        ended = self._ended.pop(name, None)
        self._emit(ReplicaEvent(name, "ready", managed.pid, now, down_s=None if ended is None else now - ended))
        threading.Thread(target=self._watch, args=(managed,), name=f"supervisor-{name}-watch", daemon=True).start()
        return managed

    def _watch(self, managed: Managed) -> None:
        """Wait for the process to end, however it ends, and say so."""
        code = managed.proc.wait()
        now = time.monotonic()
        self._ended[managed.name] = now
        if managed._ending == "stopped":
            self._emit(ReplicaEvent(managed.name, "stopped", managed.pid, now, code, expected=True))
        else:
            self._emit(ReplicaEvent(managed.name, "died", managed.pid, now, code, expected=managed._ending is not None))

    def _emit(self, event: ReplicaEvent) -> None:
        callback = self.on_event
        if callback is not None:
            callback(event)

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None,
        ready_pattern: str,
        ready_url_health: bool,
        url: str | None,
    ) -> Managed:
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        try:
            proc = subprocess.Popen(
                argv,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            raise ReplicaStartError(f"replica {name!r} could not be started: {argv[0]}: {err.strerror}") from None
        managed = Managed(name, list(argv), env, ready_pattern, ready_url_health, proc, given_url=url, url=url)
        log = self._open_log(name, proc.pid, argv)
        log_lock = threading.Lock()
        pattern = re.compile(ready_pattern)
        for stream, label in ((proc.stdout, "out"), (proc.stderr, "err")):
            assert stream is not None
            thread = threading.Thread(
                target=self._drain,
                args=(managed, stream, pattern, log, log_lock),
                name=f"supervisor-{name}-{label}",
                daemon=True,
            )
            thread.start()
            managed._drains.append(thread)
        if log is not None:
            threading.Thread(target=self._close_log_after, args=(managed, log), daemon=True).start()
        return managed

    def _open_log(self, name: str, pid: int, argv: list[str]) -> IO[str] | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "a", encoding="utf-8", errors="replace")
        log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} pid {pid}: {' '.join(argv)}\n")
        log.flush()
        return log

    @staticmethod
    def _close_log_after(managed: Managed, log: IO[str]) -> None:
        for thread in managed._drains:
            thread.join()
        log.close()

    @staticmethod
    def _drain(
        managed: Managed, stream: IO[bytes], pattern: re.Pattern[str], log: IO[str] | None, lock: threading.Lock
    ) -> None:
        """Read the child's output to its end: keeps pipes from filling, spots the ready line."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            managed.tail.append(line)
            if log is not None:
                with lock:
                    log.write(line + "\n")
                    log.flush()
            if not managed._ready.is_set():
                match = pattern.search(line)
                if match:
                    if managed.url is None and match.groups() and match.group(1):
                        managed.url = match.group(1)
                    managed._ready.set()
        stream.close()

    def _await_ready(self, managed: Managed, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        line_needed = managed.url is None
        while line_needed and not managed._ready.wait(0.05):
            self._check_start(managed, deadline)
        if managed.url is not None and (managed.ready_url_health or not line_needed):
            while not _healthy(managed.url):
                self._check_start(managed, deadline)
                time.sleep(HEALTH_POLL)
        elif managed.url is None and managed.ready_url_health:
            raise ReplicaStartError(
                f"replica {managed.name!r}: ready line matched {managed.ready_pattern!r} but gave no url to "
                "probe /health at; pass url= or a pattern whose group 1 is the url"
            )
        managed._state = "ready"

    @staticmethod
    def _check_start(managed: Managed, deadline: float) -> None:
        code = managed.proc.poll()
        if code is not None:
            for thread in managed._drains:
                thread.join(timeout=2)
            raise ReplicaStartError(
                f"replica {managed.name!r} exited with code {code} before it was ready; "
                f"last output:\n{managed.output_tail()}"
            )
        if time.monotonic() >= deadline:
            raise ReplicaStartError(
                f"replica {managed.name!r} was not ready within the start-up timeout; "
                f"last output:\n{managed.output_tail()}"
            )

    # -- signals ------------------------------------------------------------------------------

    def get(self, name: str) -> Managed:
        with self._lock:
            try:
                return self._managed[name]
            except KeyError:
                raise KeyError(f"no replica named {name!r}") from None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the replica's whole process group.

        For SIGKILL, waits until no process of the group is left, so the caller may reuse the
        port and trust that nothing still answers.
        """
        managed = self.get(name)
        if sig == signal.SIGKILL:
            self._end(managed, signal.SIGKILL, "killed", grace=0)
        else:
            managed._ending = managed._ending or "killed"  # its death, if it dies of it, was asked for
            _signal_group(managed.pgid, sig)

    def pause(self, name: str) -> None:
        """SIGSTOP the group and wait until it is stopped: alive, holding its connections, silent."""
        managed = self.get(name)
        _signal_group(managed.pgid, signal.SIGSTOP)
        _wait_stopped(managed.pgid)
        if managed.state in ("starting", "ready"):
            managed._state = "paused"

    def resume(self, name: str) -> None:
        managed = self.get(name)
        _signal_group(managed.pgid, signal.SIGCONT)
        if managed.state == "paused":
            managed._state = "ready"

    def stop(self, name: str, timeout: float = 10) -> None:
        """SIGTERM the group (a graceful shutdown), then SIGKILL whatever is left after ``timeout``."""
        self._end(self.get(name), signal.SIGTERM, "stopped", grace=timeout)

    def _end(self, managed: Managed, sig: int, state: str, grace: float) -> None:
        already_gone = managed.proc.poll() is not None
        if not already_gone and managed._ending is None:
            managed._ending = state
        _signal_group(managed.pgid, sig)
        _signal_group(managed.pgid, signal.SIGCONT)  # a paused group must run to act on SIGTERM
        if not _wait_group_gone(managed.pgid, grace):
            _signal_group(managed.pgid, signal.SIGKILL)
            _wait_group_gone(managed.pgid, 5)
        managed.proc.wait()
        for thread in managed._drains:
            thread.join(timeout=2)
        if not already_gone:
            managed._state = state

    def restart(self, name: str, timeout: float = 60) -> Managed:
        """Stop the replica if it still runs and start it again with the same command.

        The returned :class:`Managed` is new; its ``url`` may differ (a child on port 0 picks a
        fresh one), so callers re-read it — the proxy fleet's ``set_upstream`` exists for this.
        """
        old = self.get(name)
        if old.proc.poll() is None or group_members(old.pgid):
            self.stop(name)
        self._emit(ReplicaEvent(name, "restarting", old.pid, time.monotonic()))
        return self.start(
            name,
            old.argv,
            env=old.env,
            ready_pattern=old.ready_pattern,
            ready_url_health=old.ready_url_health,
            timeout=timeout,
            url=old.given_url,
        )

    def alive(self, name: str) -> bool:
        """True while the replica's process exists (a paused one is alive)."""
        return self.get(name).proc.poll() is None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._managed)

    def stop_all(self, timeout: float = 10) -> None:
        """Stop every replica still running, all at once: SIGTERM each group, then SIGKILL."""
        with self._lock:
            running = [m for m in self._managed.values() if m.proc.poll() is None or group_members(m.pgid)]
        for managed in running:
            managed._ending = managed._ending or "stopped"
            _signal_group(managed.pgid, signal.SIGTERM)
            _signal_group(managed.pgid, signal.SIGCONT)
        deadline = time.monotonic() + timeout
        for managed in running:
            self._end(managed, signal.SIGTERM, "stopped", grace=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


_live_supervisors: weakref.WeakSet[Supervisor] = weakref.WeakSet()


@atexit.register
def _stop_everything() -> None:
    """The safety net: no replica group outlives the interpreter that started it."""
    for supervisor in list(_live_supervisors):
        supervisor.stop_all(timeout=3)
