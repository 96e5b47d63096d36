"""Trace readers on the vendored production traces, on the other formats, and on malformed rows.

Every malformed row must give one message naming the file, the line and the column (or JSON
field), and what was expected; overlaying copies and scaling time must keep what they promise.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from testbed.spec import Scenario, SpecError, TraceArrivals
from testbed.traces import overlay, read_azure, read_burstgpt, read_mooncake, replay
from testbed.workload import mean_rate

TRACES = Path(__file__).resolve().parents[1] / "faults" / "traces"
AZURE = TRACES / "azure-llm-inference-2023"
MOONCAKE = TRACES / "mooncake-fast25" / "conversation_trace.jsonl.gz"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_vendored_azure_traces_read_whole():
    conv = read_azure(AZURE / "AzureLLMInferenceTrace_conv.csv")
    code = read_azure(AZURE / "AzureLLMInferenceTrace_code.csv")
    assert len(conv.time) == 19_366 and len(code.time) == 8_819
    assert conv.time[0] == 0.0 and np.all(np.diff(conv.time) >= 0)
    assert 3000 < conv.time[-1] < 3700  # about an hour
    assert conv.prompt_tokens.mean() == pytest.approx(1155, rel=0.01)
    assert conv.output_tokens.mean() == pytest.approx(211, rel=0.01)
    assert conv.prefix is None


def test_the_azure_2024_schema_reads_too(tmp_path):
    path = write(
        tmp_path / "azure2024.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,2162,5\n"
        "2024-05-10 00:00:01.509930+00:00,1600,20\n",
    )
    trace = read_azure(path)
    assert trace.time.tolist() == pytest.approx([0.0, 1.5])
    assert trace.prompt_tokens.tolist() == [2162, 1600]


def test_the_vendored_mooncake_trace_reads_with_its_block_chains():
    trace = read_mooncake(MOONCAKE)
    assert len(trace.time) == 12_031
    assert trace.time[-1] == pytest.approx(3537.0)  # ms in the file, seconds here
    assert trace.prefix is not None and trace.prefix.block_tokens == 512
    first = trace.prefix.prefix(0)
    assert list(first.ids()) == list(range(14))  # {"hash_ids": [0, 1, ..., 13]}
    assert len(trace.prefix.first) < 0.2 * sum(len(trace.prefix.prefix(i)) for i in range(2000)) * 6  # runs, not ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\nyesterday,1,1\n",
         "line 3, column 'TIMESTAMP': expected a timestamp"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47.68,-3,44\n",
         "line 3, column 'ContextTokens': expected an integer between 1 and"),
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,374\n", "missing column 'GeneratedTokens'"),
    ],
)
def test_malformed_azure_rows_name_file_line_and_column(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(SpecError) as caught:
        read_azure(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [0]}', '{"timestamp": 5, "input_len'],
         "line 2, column"),
        (['{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [0]}',
          '{"timestamp": 5, "input_length": "many", "output_length": 2, "hash_ids": [1]}'],
         "line 2, field 'input_length': expected an integer"),
        (['{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [0]}',
          '{"timestamp": 5, "input_length": 10, "output_length": 2, "hash_ids": [1, "x"]}'],
         "line 2, field 'hash_ids': expected a list of integer block ids"),
        (['{"timestamp": -4, "input_length": 10, "output_length": 2, "hash_ids": [0]}'],
         "line 1, field 'timestamp': expected a number of milliseconds >= 0"),
        (['{"timestamp": 0, "input_length": 10, "output_length": 2}'], "missing field 'hash_ids'"),
    ],
)
def test_malformed_mooncake_rows_name_file_line_and_field(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as caught:
        read_mooncake(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


BURSTGPT = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,GPT-4,1087,0,1087,Conversation log\n"
    "118,ChatGPT,417,334,751,API log\n"
)


def test_burstgpt_drops_failed_requests_and_maps_models_to_classes(tmp_path):
    trace = read_burstgpt(write(tmp_path / "burst.csv", BURSTGPT), ["GPT-4", "ChatGPT"])
    assert trace.time.tolist() == [0.0, 113.0]
    assert trace.prompt_tokens.tolist() == [472, 417] and trace.output_tokens.tolist() == [18, 334]
    assert trace.request_class.tolist() == [1, 1]
    assert trace.dropped == 1  # the GPT-4 row with 0 response tokens failed in the original service
    unnamed = read_burstgpt(tmp_path / "burst.csv", [])
    assert unnamed.request_class.tolist() == [-1, -1]  # drawn by share


def test_malformed_burstgpt_rows_name_file_line_and_column(tmp_path):
    path = write(tmp_path / "bad.csv", BURSTGPT + "130,ChatGPT,12,x,12,API log\n")
    with pytest.raises(SpecError, match=r"line 5, column 'Response tokens': expected an integer between 0"):
        read_burstgpt(path, [])


def test_overlaid_copies_are_shifted_wrapped_and_keep_their_prefixes_apart():
    trace = read_mooncake(MOONCAKE)
    spec = TraceArrivals(kind="trace", path=str(MOONCAKE), format="mooncake", copies=3, shift=1200.0)
    doubled = overlay(trace, 3, 1200.0)
    assert len(doubled.time) == 3 * len(trace.time) and np.all(np.diff(doubled.time) >= 0)
    assert doubled.time[-1] < trace.time[-1] + 10  # wrapped around the span, not appended
    roots = {next(doubled.prefix.prefix(i).ids()) for i in range(len(doubled.time))}
    assert len(roots & {0, trace.prefix.max_id() + 1, 2 * (trace.prefix.max_id() + 1)}) == 3
    fast = replay(spec.model_copy(update={"time_scale": 0.25}), 900.0, MOONCAKE, [], [])
    assert len(fast.time) == len(doubled.time)  # a quarter of the span holds the whole hour, 3 times
    assert mean_rate(spec.model_copy(update={"time_scale": 0.25}), 900.0) == pytest.approx(len(fast.time) / 900.0)


def test_a_scenario_replays_the_vendored_trace_with_its_prefixes():
    scenario = Scenario.model_validate(
        {
            "name": "mooncake",
            "topology": {"name": "t", "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
                {"name": "k", "device": "H100", "devices_per_node": 2}]}]}]}]},
            "workload": {"arrival": {"kind": "trace", "format": "mooncake", "path": str(MOONCAKE), "time_scale": 1.0}},
            "serving": {"batching": {"policy": "continuous", "prefix_caching": True, "block_size": 16}},
            "duration": 30,
        }
    )
    from testbed.rng import RandomStreams
    from testbed.workload import generate

    arrivals = generate(scenario.workload, 30.0, ["p/r"], RandomStreams(0))
    assert arrivals.prefix is not None and len(arrivals.prefix) == len(arrivals)
    bad = scenario.model_dump(by_alias=True)
    bad["serving"]["batching"]["block_size"] = 48
    with pytest.raises(Exception, match="block_size .48. must divide the workload's block size"):
        Scenario.model_validate(bad)
