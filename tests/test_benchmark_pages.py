"""Benchmark figures reach the docs through their scripts (``--markdown PAGE``), never by hand.

A script replaces only its own block of the page, keeps the prose around it, appends a block the
page lacks, and says how and when it measured. The chaos-proxy benchmark is run for real, small.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from page import write_block  # noqa: E402


def test_a_block_is_replaced_in_place_and_the_prose_kept(tmp_path: Path) -> None:
    page = tmp_path / "bench.md"
    page.write_text("# Benchmarks\n\nprose before\n\n<!-- begin: x -->\nold\n<!-- end: x -->\n\nprose after\n")
    write_block(page, "x", "new figures")
    text = page.read_text()
    assert "old" not in text and "new figures" in text
    assert text.index("prose before") < text.index("new figures") < text.index("prose after")
    write_block(page, "y", "another")
    assert page.read_text().rstrip().endswith("<!-- begin: y -->\nanother\n<!-- end: y -->")


def test_the_shipped_pages_hold_a_block_for_every_benchmark() -> None:
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    for script in ("sim_throughput", "observe_overhead", "run_overhead", "campaign_scaling", "live_batching", "live_failover", "chaos_proxy"):
        assert f"<!-- begin: {script} -->" in benchmarks, script
        assert f"python benchmarks/{script}.py" in benchmarks, script
    assert "<!-- begin: fidelity -->" in (ROOT / "docs" / "fidelity.md").read_text()
    caching = (ROOT / "docs" / "caching.md").read_text()
    for block, script in (("prefix-fidelity", "prefix_fidelity"), ("cache_cold_failover", "cache_cold_failover")):
        assert f"<!-- begin: {block} -->" in caching and f"python benchmarks/{script}.py" in caching, block


def test_a_benchmark_script_writes_its_figures_into_the_page(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n<!-- begin: chaos_proxy -->\nstale\n<!-- end: chaos_proxy -->\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chaos_proxy.py"), "--pings", "40", "--megabytes", "2",
                    "--rounds", "1", "--markdown", str(page)], check=True, env=env, capture_output=True, timeout=60)
    text = page.read_text()
    assert "stale" not in text
    assert "| round trip (median of 40) |" in text and "MB/s" in text
    assert "*Measured by `python benchmarks/chaos_proxy.py --pings 40" in text and "load average" in text
