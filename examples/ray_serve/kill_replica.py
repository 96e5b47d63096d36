"""Kill one replica of the Ray Serve application as a crash would — or wait until Ray Serve has replaced it.

    python examples/ray_serve/kill_replica.py
    python examples/ray_serve/kill_replica.py --wait-recovered 120 --url http://127.0.0.1:8301

The first finds the replica actors' worker processes by the title Ray gives them
(``ray::ServeReplica:<app>:<deployment>``) and SIGKILLs one: the process dies with its batch,
and only Ray Serve's controller can bring the deployment back to its replica count. The second
waits until the killed process is gone, as many replica processes run as the deployment wants,
and the application's ``/replicas`` says the deployment is HEALTHY with every replica RUNNING —
so the time it takes, used as a target's ``restart`` action, is Ray Serve's own recovery.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

TITLE = "ray::ServeReplica:default:Completions"
KILLED = Path(os.environ.get("PID_DIR", "/tmp")) / "testbed-ray-killed"  # pids this script killed


def replica_pids() -> list[int]:
    """Processes whose command line is the replica actor's title (what ``pgrep -f`` matches)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace").startswith(TITLE):
            found.append(int(entry.name))
    return sorted(found)


def status(url: str) -> dict:
    try:
        with urllib.request.urlopen(f"{url}/replicas", timeout=5) as response:
            return json.loads(response.read())
    except OSError as exc:
        return {"status": f"unreachable: {exc}", "replica_states": {}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wait-recovered", type=float, default=None, help="seconds to wait for Ray Serve to replace it")
    parser.add_argument("--url", default="http://127.0.0.1:8301", help="the application (for --wait-recovered)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas the deployment wants")
    args = parser.parse_args()
    if args.wait_recovered is None:
        pids = replica_pids()
        if not pids:
            print(f"no process titled {TITLE} is running", file=sys.stderr)
            return 1
        os.kill(pids[0], signal.SIGKILL)
        with open(KILLED, "a") as book:
            book.write(f"{pids[0]}\n")
        print(f"SIGKILL to replica process {pids[0]} ({len(pids)} were running)")
        return 0
    killed = {int(p) for p in KILLED.read_text().split()} if KILLED.exists() else set()
    deadline = time.monotonic() + args.wait_recovered
    while True:
        pids = set(replica_pids())
        now = status(args.url)
        # Until the controller notices the death the deployment still reads HEALTHY: recovered is
        # the killed process gone, a replacement running, and the controller saying so.
        if not pids & killed and len(pids) >= args.replicas and now["status"] == "HEALTHY" \
                and now["replica_states"].get("RUNNING", 0) >= args.replicas:
            KILLED.unlink(missing_ok=True)
            print(f"recovered: {now['replica_states']}")
            return 0
        if time.monotonic() > deadline:
            print(f"not recovered within {args.wait_recovered:g} s: {now}", file=sys.stderr)
            return 1
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
