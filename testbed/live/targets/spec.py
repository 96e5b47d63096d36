"""The target spec: the user's own deployment, and how each fault is carried out on it.

A target file names the OpenAI-compatible endpoints of a deployment, grouped into regions and
pools exactly as a scenario's topology groups its replicas, and for each endpoint the *actions*
that carry out faults on it — whatever the user's platform uses:

* ``signal`` — a signal to a process or its whole process group, found by ``pid``, ``pidfile``
  or a ``pid_command`` that prints the pid (``pgrep -f ...``, ``docker inspect -f {{.State.Pid}}``);
* ``command`` — a shell command (``docker kill``, ``kubectl delete pod``, ``systemctl restart``);
* ``http`` — an HTTP call (a chaos hook, a management API);
* ``self_healing`` — nothing to do: the platform restarts what died by itself (Ray Serve, a
  Kubernetes Deployment); testbed only waits, and measures how long it took.

Network faults and region cuts go through the project's chaos proxy placed in front of the
endpoint (``proxy:``). Strings may use ``${NAME}`` / ``${NAME:-default}`` from the environment, so
one file serves several machines (and the tests, which pick free ports); shell commands are
expanded by the shell itself, which also sees ``TESTBED_PYTHON`` and the endpoint's name and URL. Like every spec it is
validated by pydantic and a bad file gets one message naming the file, the field and what was
expected.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal as signals
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import Discriminator, Field, PositiveInt, Tag, field_validator, model_validator

from testbed.spec import Duration, Fraction, SpecError, Strict, validate_spec

VERBS = ("kill", "restart", "pause", "resume", "hooks")
LOOPBACK_NAMES = frozenset({"localhost"})


class SignalAction(Strict):
    """Send ``signal`` to the process (or, with ``group``, its process group)."""

    signal: str = Field(description="a signal name: SIGKILL, SIGTERM, SIGSTOP, SIGCONT, ...")
    pid: PositiveInt | None = None
    pidfile: str | None = None
    pid_command: str | None = Field(None, description="a shell command that prints the pid")
    group: bool = Field(False, description="signal the whole process group (servers with worker processes)")

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
        if not isinstance(getattr(signals, name, None), signals.Signals):
            raise ValueError(f"unknown signal {value!r}; expected a name like SIGKILL, SIGSTOP or SIGCONT")
        return name

    @model_validator(mode="after")
    def _one_way_to_the_pid(self) -> SignalAction:
        given = [name for name in ("pid", "pidfile", "pid_command") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of pid, pidfile or pid_command (got {', '.join(given) or 'none'})")
        return self

    def describe(self) -> str:
        where = f"pid {self.pid}" if self.pid else f"pidfile {self.pidfile}" if self.pidfile else f"pid of `{self.pid_command}`"
        return f"{self.signal} to {'the process group of ' if self.group else ''}{where}"


class CommandAction(Strict):
    """Run ``command`` in a shell; a non-zero exit is a failed action."""

    command: str = Field(min_length=1)
    timeout: Duration = 120.0

    def describe(self) -> str:
        return f"run `{self.command}`"


class HttpCall(Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str
    json_body: dict[str, Any] | None = Field(None, alias="json", description="a JSON body (hooks merge their parameters in)")
    headers: dict[str, str] = Field(default_factory=dict)
    expect: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    timeout: Duration = 30.0

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_url(value)


class HttpAction(Strict):
    """Make an HTTP call; a status outside ``expect`` is a failed action."""

    http: HttpCall

    def describe(self) -> str:
        return f"{self.http.method} {self.http.url}"


class SelfHealingAction(Strict):
    """The platform restores the endpoint itself; testbed waits for it to be healthy again."""

    self_healing: Literal[True]

    def describe(self) -> str:
        return "wait for the platform to restore it"


def _action_kind(value: Any) -> str | None:
    """Which way an action is carried out, from the key it has (so errors name only that way)."""
    if isinstance(value, dict):
        found = [key for key in ("signal", "command", "http", "self_healing") if key in value]
        return found[0] if len(found) == 1 else None
    return {SignalAction: "signal", CommandAction: "command", HttpAction: "http", SelfHealingAction: "self_healing"}.get(type(value))


ActionSpec = Annotated[
    Union[
        Annotated[SignalAction, Tag("signal")],
        Annotated[CommandAction, Tag("command")],
        Annotated[HttpAction, Tag("http")],
        Annotated[SelfHealingAction, Tag("self_healing")],
    ],
    Discriminator(
        _action_kind,
        custom_error_type="action_kind",
        custom_error_message="expected exactly one of signal, command, http or self_healing",
    ),
]


class Actions(Strict):
    """How each fault verb is carried out on one endpoint; a verb left out is not possible here.

    After ``restart`` and ``resume`` testbed waits until the endpoint answers its health check
    (at most ``recover_within``), so a restart is done when the endpoint serves again.
    """

    kill: ActionSpec | None = Field(None, description="crash: accelerator_failure, node_crash, capacity_loss, outage of a node")
    restart: ActionSpec | None = Field(None, description="undo kill (at repair, and in every rollback)")
    pause: ActionSpec | None = Field(None, description="node_hang (e.g. SIGSTOP)")
    resume: ActionSpec | None = Field(None, description="undo pause (e.g. SIGCONT)")
    hooks: HttpAction | None = Field(
        None, description="slowdown and error_injection: an HTTP call sent {slowdown, error_rate, error_status} as JSON"
    )
    recover_within: Duration = 120.0


class ProxySpec(Strict):
    """A chaos proxy in front of the endpoint (network faults, region cuts).

    In gateway mode the project's gateway calls the endpoint through it. In client mode your
    router must send to it, so give it a fixed ``port`` and point your router there.
    """

    port: int = Field(0, ge=0, le=65535, description="port on 127.0.0.1 (0 picks one; gateway mode only)")


class Endpoint(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    url: str = Field(description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000")
    health: str | None = Field("/health", description="path answering 200 when the endpoint serves; null: none")
    metrics: str | None = Field("/metrics", description="Prometheus path scraped during the run; null: none")
    proxy: ProxySpec | None = None
    actions: Actions = Field(default_factory=Actions)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_url(value)


class Region(Strict):
    pools: dict[str, list[Endpoint]] = Field(min_length=1, description="pool name -> its endpoints, in the topology's order")


class SteadyState(Strict):
    """What must hold before the faults and again after recovery (Chaos Toolkit's hypothesis)."""

    health: bool = Field(True, description="every endpoint's health path answers 200")
    completion: bool = Field(True, description="a completion through the entry point (client) or each endpoint (gateway) succeeds")
    within: Duration = Field(60.0, description="how long the check after recovery may wait for it to hold")


class AvailabilityStop(Strict):
    window: Duration = Field(10.0, gt=0)
    min: Fraction
    min_requests: PositiveInt = 5


class BurnRateStop(Strict):
    """Abort when the scenario's availability error budget burns ``burn`` times too fast over both windows."""

    long: Duration = Field(30.0, gt=0)
    short: Duration = Field(5.0, gt=0)
    burn: float = Field(10.0, gt=0)
    min_requests: PositiveInt = 5


class StopConditions(Strict):
    availability: AvailabilityStop | None = None
    burn_rate: BurnRateStop | None = None


class TargetSpec(Strict):
    """A deployment under test: see the module docstring."""

    name: str = Field(min_length=1)
    description: str = ""
    model: str = Field(description="the model name the endpoints serve (the requests' ``model``)")
    mode: Literal["client", "gateway"] = "gateway"
    entry: str | None = Field(None, description="client mode: the URL of your own gateway or router")
    stream: bool = Field(True, description="ask for streamed completions (TTFT is measured from the first chunk)")
    regions: dict[str, Region] = Field(min_length=1, description="'provider/region' -> its pools")
    steady_state: SteadyState = Field(default_factory=SteadyState)
    stop: StopConditions = Field(default_factory=StopConditions)
    blast_radius: Fraction = Field(0.5, description="at most this share of the endpoints under a fault at once")
    scrape_interval: Duration = Field(1.0, gt=0)

    @field_validator("entry")
    @classmethod
    def _entry_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("regions")
    @classmethod
    def _region_paths(cls, value: dict[str, Region]) -> dict[str, Region]:
        for path in value:
            if not re.fullmatch(r"[^/\s]+/[^/\s]+", path):
                raise ValueError(f"region {path!r}: expected a 'provider/region' path, as in the scenario's topology")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> TargetSpec:
        names = [e.name for e in self.endpoints()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def endpoints(self) -> list[Endpoint]:
        return [e for region in self.regions.values() for pool in region.pools.values() for e in pool]

    def placed(self) -> list[tuple[str, str, Endpoint]]:
        """(region, pool, endpoint) in file order."""
        return [(r, p, e) for r, region in self.regions.items() for p, pool in region.pools.items() for e in pool]

    def urls(self) -> list[tuple[str, str]]:
        """(field, URL) of every address testbed will call, for the loopback check."""
        found = [("entry", self.entry)] if self.entry else []
        for region, pools in self.regions.items():
            for pool, endpoints in pools.pools.items():
                found += [(f"regions.{region}.pools.{pool}.{i}{suffix}", url) for i, e in enumerate(endpoints) for suffix, url in _urls(e)]
        return found


def _urls(e: Endpoint) -> list[tuple[str, str]]:
    found = [(".url", e.url)]
    for verb in VERBS:
        action = getattr(e.actions, verb)
        if isinstance(action, HttpAction):
            found.append((f".actions.{verb}.http.url", action.http.url))
    return found


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL like http://127.0.0.1:8000, got {value!r}")
    return value.rstrip("/")


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_loopback(spec: TargetSpec, source: str, allow_remote: bool) -> None:
    """Refuse addresses outside this machine unless the user said so (``--allow-remote``)."""
    if allow_remote:
        return
    for where, url in spec.urls():
        if not is_loopback(url):
            raise SpecError(
                f"{source}: {where}: {url} is not on this machine (loopback); pass --allow-remote to send faults "
                "and load to another machine"
            )


SHELL_FIELDS = frozenset({"command", "pid_command"})
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, where: str, source: str) -> Any:
    """``${NAME}`` and ``${NAME:-default}`` in every string, from the environment."""
    if isinstance(value, dict):
        # Shell commands are left to the shell, which expands the same syntax with the same environment.
        return {k: v if k in SHELL_FIELDS else _expand(v, f"{where}.{k}" if where else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}.{i}", source) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise SpecError(f"{source}: {where}: ${{{name}}} is not set in the environment (write ${{{name}:-default}} for a default)")
        return default

    expanded = _VARIABLE.sub(substitute, value)
    # A whole-value number (a port from the environment) becomes a number, as YAML would read it.
    return int(expanded) if expanded != value and expanded.isdigit() and _VARIABLE.fullmatch(value) else expanded


def load_target(path: str | Path, allow_remote: bool = False) -> TargetSpec:
    """Read and validate a target file; :class:`SpecError` with one clear message otherwise."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    spec = target_from_data(_expand(data, "", str(path)), str(path))
    check_loopback(spec, str(path), allow_remote)
    return spec


def target_from_data(data: dict[str, Any], source: str) -> TargetSpec:
    return validate_spec(data, TargetSpec, source=source)


def target_schema() -> dict[str, Any]:
    return TargetSpec.model_json_schema(by_alias=True)
