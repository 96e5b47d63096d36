"""The supervisor against real child processes, real signals and real HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from testbed.live.supervisor import ReplicaStartError, Supervisor, group_members

# A replica stand-in: serves /health and / (its pid) on a free port, then says READY with its url.
SERVER = textwrap.dedent(
    """
    import http.server, os, sys, threading, time
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = str(os.getpid()).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    time.sleep(delay)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    print("hello from the replica", flush=True)
    print(f"READY pid={os.getpid()} url=http://127.0.0.1:{srv.server_address[1]}", flush=True)
    srv.serve_forever()
    """
)

# Forks a grandchild into the same process group, prints its pid, then READY.
SPAWNER = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(f"GRANDCHILD {child.pid}", flush=True)
    print("READY url=none", flush=True)
    time.sleep(120)
    """
)


def get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def proc_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


@pytest.fixture
def sup(tmp_path):
    with Supervisor(log_dir=tmp_path / "logs") as supervisor:
        yield supervisor


def test_start_waits_for_the_ready_line_and_reports_url_pid_and_group(sup, tmp_path):
    m = sup.start("r1", [sys.executable, "-c", SERVER], timeout=60)
    assert m.state == "ready" and sup.alive("r1")
    assert m.url and m.url.startswith("http://127.0.0.1:")
    assert m.pgid == m.pid == os.getpgid(m.pid) != os.getpgid(0)
    assert get(m.url) == str(m.pid)
    log = (tmp_path / "logs" / "r1.log").read_text()
    assert "hello from the replica" in log and "READY" in log


def test_pause_makes_it_hang_and_resume_brings_it_back(sup):
    m = sup.start("r1", [sys.executable, "-c", SERVER], timeout=60)
    sup.pause("r1")
    assert m.state == "paused" and sup.alive("r1") and proc_state(m.pid) == "T"
    with pytest.raises((TimeoutError, urllib.error.URLError, socket.timeout)):
        get(m.url, timeout=0.5)
    sup.resume("r1")
    assert m.state == "ready" and get(m.url) == str(m.pid)


def test_sigkill_ends_the_group_and_restart_gives_a_new_process(sup):
    m = sup.start("r1", [sys.executable, "-c", SERVER], timeout=60)
    sup.kill("r1")
    assert not sup.alive("r1") and m.state == "killed" and group_members(m.pgid) == []
    with pytest.raises(urllib.error.URLError):
        get(m.url, timeout=1)
    m2 = sup.restart("r1", timeout=60)
    assert m2.pid != m.pid and m2.state == "ready" and sup.get("r1") is m2
    assert get(m2.url) == str(m2.pid)


def test_restart_of_a_running_replica_stops_it_first(sup):
    m = sup.start("r1", [sys.executable, "-c", SERVER], timeout=60)
    m2 = sup.restart("r1", timeout=60)
    assert m.state == "stopped" and not pid_alive(m.pid) and get(m2.url) == str(m2.pid)


def test_group_kill_takes_the_grandchild_too_where_killing_the_leader_does_not(sup):
    m = sup.start("spawner", [sys.executable, "-c", SPAWNER], timeout=60)
    grandchild = int(next(line.split()[1] for line in m.tail if line.startswith("GRANDCHILD")))
    assert os.getpgid(grandchild) == m.pgid
    os.kill(m.pid, signal.SIGKILL)  # what a naive supervisor does: the grandchild is orphaned, alive
    m.proc.wait()
    time.sleep(0.2)
    assert pid_alive(grandchild) and group_members(m.pgid) == [grandchild]
    sup.kill("spawner")
    assert not pid_alive(grandchild) and group_members(m.pgid) == []


def test_a_child_that_dies_before_ready_raises_with_code_and_output(sup):
    code = "import sys; print('loading model', flush=True); sys.stderr.write('boom: no such model\\n'); sys.exit(3)"
    with pytest.raises(ReplicaStartError) as err:
        sup.start("bad", [sys.executable, "-c", code], timeout=60)
    message = str(err.value)
    assert "'bad'" in message and "code 3" in message and "boom: no such model" in message


def test_a_missing_program_is_a_start_error(sup, tmp_path):
    with pytest.raises(ReplicaStartError, match="could not be started: .*nope"):
        sup.start("ghost", [str(tmp_path / "nope")], timeout=5)


def test_a_child_that_never_gets_ready_times_out_and_is_killed(sup):
    with pytest.raises(ReplicaStartError, match="not ready within"):
        sup.start("slow", [sys.executable, "-c", "import time; print('warming', flush=True); time.sleep(60)"], timeout=1)
    m = sup.get("slow")
    assert not sup.alive("slow") and group_members(m.pgid) == []


def test_health_polling_on_a_known_url_without_a_ready_line(sup):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Listens only after 0.5 s and never prints a matching line: readiness is /health alone.
    m = sup.start("h", [sys.executable, "-c", SERVER, str(port), "0.5"], ready_pattern=r"^NEVER$", url=url, timeout=60)
    assert m.url == url and get(url + "/health") == str(m.pid)
    sup.kill("h")
    m2 = sup.restart("h", timeout=60)
    assert m2.url == url and get(url) == str(m2.pid)


def test_stop_is_graceful_then_forceful(sup):
    graceful = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)))\n"
        "print('READY url=x', flush=True)\ntime.sleep(60)"
    )
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('READY url=x', flush=True)\ntime.sleep(60)"
    g = sup.start("g", [sys.executable, "-c", graceful], timeout=60)
    s = sup.start("s", [sys.executable, "-c", stubborn], timeout=60)
    sup.pause("g")  # a paused group still gets its SIGTERM acted on
    sup.stop("g")
    assert g.returncode == 0 and "bye" in g.tail and g.state == "stopped"
    started = time.monotonic()
    sup.stop("s", timeout=0.5)
    assert s.returncode == -signal.SIGKILL and time.monotonic() - started < 5


def test_stop_all_and_the_context_manager_leave_nothing_running(tmp_path):
    with Supervisor() as supervisor:
        managed = [supervisor.start(f"r{i}", [sys.executable, "-c", SPAWNER], timeout=60) for i in range(2)]
    assert all(group_members(m.pgid) == [] for m in managed)


def test_atexit_stops_replicas_when_the_parent_dies_of_an_exception(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from testbed.live.supervisor import Supervisor
        sup = Supervisor()
        m = sup.start("r", [sys.executable, "-c", {SPAWNER!r}], timeout=60)
        print(m.pgid, flush=True)
        raise RuntimeError("the test run blew up")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "the test run blew up" in proc.stderr
    assert group_members(int(proc.stdout.split()[0])) == []


def test_starting_a_running_name_twice_is_refused(sup):
    sup.start("r1", [sys.executable, "-c", SERVER], timeout=60)
    with pytest.raises(ValueError, match="already running"):
        sup.start("r1", [sys.executable, "-c", SERVER], timeout=60)


def test_every_state_change_is_an_event_and_an_unasked_death_is_seen_at_once(tmp_path):
    events = []
    with Supervisor(tmp_path, on_event=events.append) as sup:
        managed = sup.start("a", [sys.executable, "-c", SERVER])
        first = managed.pid
        os.killpg(first, signal.SIGKILL)  # not through the supervisor: its watcher must notice
        deadline = time.monotonic() + 10
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        sup.restart("a")
        sup.kill("a")  # a fault's kill: a death that was asked for
    kinds = [(e.kind, e.expected) for e in events]
    assert kinds == [("ready", False), ("died", False), ("restarting", False), ("ready", False), ("died", True)], kinds
    died = events[1]
    assert died.pid == first and died.returncode == -signal.SIGKILL
    assert died.describe() == f"replica a died (signal SIGKILL, pid {first})"
    assert events[0].down_s is None and events[3].down_s > 0
    assert events[3].describe().startswith("replica a ready again after ")
    assert events[3].pid != first


def test_a_stop_is_an_event_of_its_own_not_a_death(tmp_path):
    events = []
    with Supervisor(tmp_path, on_event=events.append) as sup:
        sup.start("a", [sys.executable, "-c", SERVER])
        sup.start("b", [sys.executable, "-c", "import sys, time; print('READY url=none', flush=True); time.sleep(0.3); sys.exit(3)"])
        sup.stop("a")
        time.sleep(1)
    assert ("stopped", "a") in [(e.kind, e.name) for e in events]
    b = [e for e in events if e.name == "b" and e.kind != "ready"]
    assert [e.kind for e in b] == ["died"] and b[0].describe().endswith(f"(exit code 3, pid {b[0].pid})")
