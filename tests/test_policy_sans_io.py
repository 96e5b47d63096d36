"""The sans-IO contract of ``testbed/policy/``, checked on the whole package.

Both planes run the same policy objects: the simulator with SimPy time, the live gateway with
asyncio and the wall clock. That only holds while no policy module pulls in an I/O framework,
directly or through a helper it imports, so this test imports every policy module in a fresh
interpreter and looks at what ended up loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Event loops, simulators, tensor libraries and HTTP stacks: anything that would tie a policy
# to one plane's clock or transport.
BANNED = {
    "simpy", "asyncio", "trio", "anyio", "torch", "httpx", "httpcore", "aiohttp", "requests",
    "urllib3", "fastapi", "starlette", "uvicorn", "h11", "http", "ray",
}

PROBE = """
import importlib, json, pkgutil, sys
import testbed.policy as policy
names = [m.name for m in pkgutil.iter_modules(policy.__path__)]
for name in names:
    importlib.import_module("testbed.policy." + name)
print(json.dumps({"modules": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_policy_package_loads_no_io_framework() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout)
    # The probe must really have walked the package, or an empty result would pass vacuously.
    assert {"batching", "routing", "gateway", "retry", "health"} <= set(probe["modules"])
    assert sorted(BANNED & set(probe["loaded"])) == []
