"""Carrying out one endpoint action: a signal, a shell command, an HTTP call, or waiting.

Every hook reports what it did in words (``SIGKILL to pid 4242``), which goes into the journal.
A hook that fails raises :class:`ActionFailed` with the reason; the injector records it and the
run goes on, as a failed action on the project's own stack does.

Shell commands run in the target file's directory, in a session of their own (so a command that
starts a server in the background leaves it running after the shell exits), with their output
in a file rather than a pipe (a server holding the pipe open would otherwise hold the command
"running" forever). They see ``TESTBED_ENDPOINT``, ``TESTBED_URL``, ``TESTBED_PARAMS`` (the
fault's parameters as JSON) and ``TESTBED_PYTHON`` (the interpreter running testbed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from testbed.live.targets.spec import ActionSpec, CommandAction, Endpoint, HttpAction, SelfHealingAction, SignalAction


class ActionFailed(RuntimeError):
    """A hook could not be carried out; the message says why."""


async def perform(action: ActionSpec, endpoint: Endpoint, params: dict[str, Any], base_dir: Path) -> str:
    """Carry out ``action`` on ``endpoint``; returns what was done, in words."""
    if isinstance(action, SignalAction):
        return await asyncio.to_thread(_signal, action, base_dir)
    if isinstance(action, CommandAction):
        return await _command(action, endpoint, params, base_dir)
    if isinstance(action, HttpAction):
        return await _http(action, params)
    assert isinstance(action, SelfHealingAction)
    return "left to the platform"


def find_pid(action: SignalAction, base_dir: Path) -> int:
    if action.pid is not None:
        return action.pid
    if action.pidfile is not None:
        path = base_dir / action.pidfile
        try:
            text = path.read_text().split()
        except OSError as exc:
            raise ActionFailed(f"pidfile {path}: {exc.strerror or exc}") from None
        if not text or not text[0].isdigit():
            raise ActionFailed(f"pidfile {path} holds no pid")
        return int(text[0])
    import subprocess

    assert action.pid_command is not None
    try:
        out = subprocess.run(action.pid_command, shell=True, capture_output=True, text=True, timeout=30, cwd=base_dir)
    except subprocess.TimeoutExpired:
        raise ActionFailed(f"pid_command `{action.pid_command}` did not finish in 30 s") from None
    words = out.stdout.split()
    if out.returncode != 0 or not words or not words[0].isdigit():
        raise ActionFailed(f"pid_command `{action.pid_command}` printed no pid (exit {out.returncode}): {out.stderr.strip()[-200:]}")
    return int(words[0])


def _signal(action: SignalAction, base_dir: Path) -> str:
    pid = find_pid(action, base_dir)
    sig = signal.Signals[action.signal]
    try:
        if action.group:
            group = os.getpgid(pid)
            if group == os.getpgid(0):
                raise ActionFailed(f"pid {pid} is in testbed's own process group; signal it alone (group: false)")
            os.killpg(group, sig)
            return f"{sig.name} to process group {group} (pid {pid})"
        os.kill(pid, sig)
    except ProcessLookupError:
        raise ActionFailed(f"{sig.name}: no process {pid}") from None
    except PermissionError:
        raise ActionFailed(f"{sig.name}: not allowed to signal pid {pid}") from None
    return f"{sig.name} to pid {pid}"


async def _command(action: CommandAction, endpoint: Endpoint, params: dict[str, Any], base_dir: Path) -> str:
    env = {
        **os.environ,
        "TESTBED_ENDPOINT": endpoint.name,
        "TESTBED_URL": endpoint.url,
        "TESTBED_PARAMS": json.dumps(params),
        "TESTBED_PYTHON": sys.executable,
    }
    with tempfile.TemporaryFile() as output:
        process = await asyncio.create_subprocess_shell(
            action.command, stdout=output, stderr=output, stdin=asyncio.subprocess.DEVNULL, cwd=base_dir, env=env,
            start_new_session=True,
        )
        try:
            code = await asyncio.wait_for(process.wait(), action.timeout)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise ActionFailed(f"`{action.command}` did not finish within {action.timeout:g} s") from None
        except asyncio.CancelledError:
            # Ctrl-C while a restart runs: let it finish, a half-done restart would leak a process.
            await asyncio.wait_for(process.wait(), action.timeout)
            raise
        output.seek(0)
        tail = output.read()[-400:].decode(errors="replace").strip()
    if code != 0:
        raise ActionFailed(f"`{action.command}` exited {code}: {tail}")
    said = tail.splitlines()[-1].strip() if tail else ""
    return f"ran `{action.command}`" + (f": {said}" if said else "")


def hook_body(action: HttpAction, params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON body: the action's own, with the fault's hook parameters merged in."""
    body = dict(action.http.json_body or {})
    for key, value in params.items():
        if key == "error_status":
            body[key] = [int(value)]
        elif key != "kind":
            body[key] = value
    return body or None


async def _http(action: HttpAction, params: dict[str, Any]) -> str:
    call = action.http
    body = hook_body(action, params)
    try:
        async with httpx.AsyncClient(timeout=call.timeout) as client:
            response = await client.request(call.method, call.url, json=body, headers=call.headers)
    except httpx.HTTPError as exc:
        raise ActionFailed(f"{call.method} {call.url}: {type(exc).__name__}: {exc}") from None
    if response.status_code not in call.expect:
        raise ActionFailed(f"{call.method} {call.url} answered {response.status_code}: {response.text[:200]}")
    return f"{call.method} {call.url} -> {response.status_code}" + (f" {json.dumps(body)}" if body else "")


async def healthy(endpoint: Endpoint, timeout: float = 2.0) -> bool:
    """Does the endpoint answer its health path with a 200 (True when it has none)?"""
    if endpoint.health is None:
        return True
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(endpoint.url + endpoint.health)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def wait_healthy(endpoint: Endpoint, within: float) -> float:
    """Wait until the endpoint is healthy; the seconds it took, or :class:`ActionFailed`."""
    started = time.monotonic()
    while not await healthy(endpoint):
        if time.monotonic() - started > within:
            raise ActionFailed(f"endpoint {endpoint.name} not healthy at {endpoint.url}{endpoint.health} within {within:g} s")
        await asyncio.sleep(0.2)
    return time.monotonic() - started
