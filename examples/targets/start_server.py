"""Start a model server on its own, outside testbed's stack, as a user's deployment would run it.

    python examples/targets/start_server.py replica --port 8101 --pidfile /tmp/r0.pid
    python examples/targets/start_server.py vllm --port 8201 --pidfile /tmp/v0.pid --wait 300

``replica`` is the project's own replica server (PyTorch), ``vllm`` the real vLLM OpenAI server
(from .venv-vllm). The server runs in a session of its own, detached from this script, with its
output in ``--log``; its pid goes to ``--pidfile`` (its process group has the same id, so a
target can signal the whole group). With ``--wait`` the script returns once ``/health`` answers
200 — the examples' targets use it as their ``restart`` action.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def command(kind: str, port: int, name: str, model: str) -> tuple[list[str], dict[str, str]]:
    if kind == "replica":
        argv = [sys.executable, "-m", "testbed.live.replica.server", "--model", model, "--port", str(port), "--name", name, "--threads", "1"]
        return argv, {"OMP_NUM_THREADS": "1"}
    from testbed.live.replica.models import ensure_model
    from testbed.live.replica.vllm import vllm_command

    return vllm_command(ensure_model(model), port, name)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("kind", choices=["replica", "vllm"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument("--name", default="r0")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--log", type=Path, default=None, help="server output (default: beside the pidfile)")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for /health (0: do not wait)")
    args = parser.parse_args()
    argv, env = command(args.kind, args.port, args.name, args.model)
    log = args.log or args.pidfile.with_suffix(".log")
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    args.pidfile.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + args.wait
    while args.wait and not healthy(args.port):
        if process.poll() is not None:
            print(f"{args.kind} server exited with {process.returncode}; see {log}", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"{args.kind} server not healthy within {args.wait:g} s; see {log}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
