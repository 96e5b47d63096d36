"""Tests for testbed.perf: the roofline against published figures, its shape, the exact decode
stretches, calibrated tables and their errors, KV capacity and model selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.catalog import DEVICES, MODELS, ModelKind
from testbed.perf import PerfModel, PerfProfile, Roofline, TableModel, kv_capacity_tokens, perf_model_for
from testbed.spec import SpecError, TopologySpec

A100 = DEVICES["A100"]
H100 = DEVICES["H100"]
LLAMA_2_7B = MODELS["llama-2-7b"]
LLAMA_3_8B = MODELS["llama-3-8b"]
# Llama-2-70B is not in the catalog: same shape as Llama-3-70B with a 32k vocabulary (model card).
LLAMA_2_70B = ModelKind(params=68.98e9, layers=80, hidden=8192, kv_heads=8, head_dim=128, max_context=4096)
# A100 40GB SXM4: 1,555 GB/s HBM2 (NVIDIA A100 datasheet); otherwise as the 80GB part.
A100_40GB = A100.model_copy(update={"memory_bandwidth": 1.555e12, "memory_bytes": 40e9})

TOLERANCE = 0.25  # the roofline must land within 25% of each published figure


def within(predicted: float, published: float, tolerance: float = TOLERANCE) -> bool:
    return abs(predicted / published - 1) <= tolerance


def static_batch_throughput(model: PerfModel, batch: int, prompt: int, output: int) -> float:
    """Output tokens/s of a static batch: each prompt's context phase (attention is per prompt),
    then output-1 decode steps of the whole batch (the context phase emits the first token)."""
    prefill = batch * model.iteration_time(prompt, 0, 0)
    decode = model.decode_stretch_time(batch, batch * prompt, output - 1)
    return batch * output / (prefill + decode)


# --------------------------------------------------------------------------- published figures
# TensorRT-LLM "Performance of TensorRT-LLM", docs/source/performance.md (NVIDIA/TensorRT-LLM, v0.6.1
# tables; low-latency tables from v0.5), A100 FP16. Predictions quoted are with the catalog defaults.


def test_trtllm_a100_llama7b_first_token_latency_2048():
    # Low latency, A100 FP16, LLaMA 7B, batch 1, TP 1, input 2048: 1st token latency 133 ms.
    # Predicted 154 ms (+16%): compute bound at ~60% MFU where TensorRT-LLM reaches ~69%.
    assert within(Roofline(LLAMA_2_7B, A100).iteration_time(2048, 0, 0), 0.133)


def test_trtllm_a100_llama70b_tp4_first_token_latency_2048():
    # Low latency, A100 FP16, LLaMA 70B, batch 1, TP 4, input 2048: 1st token latency 377 ms.
    # Predicted 415 ms (+10%), of which ~30 ms is tensor-parallel all-reduce.
    assert within(Roofline(LLAMA_2_70B, A100, tensor_parallel=4).iteration_time(2048, 0, 0), 0.377)


def test_trtllm_a100_llama7b_decode_heavy_throughput():
    # Peak throughput, A100 FP16, LLaMA 7B, batch 60, TP 1, 128 in / 2048 out: 1,928 out tok/s.
    # Predicted 1,888 tok/s (-2%): memory bound, reading ~36 GB of KV a step on top of the weights.
    assert within(static_batch_throughput(Roofline(LLAMA_2_7B, A100), 60, 128, 2048), 1928)


def test_trtllm_a100_llama7b_large_batch_throughput():
    # Peak throughput, A100 FP16, LLaMA 7B, batch 384, TP 1, 128 in / 128 out: 5,586 out tok/s.
    # Predicted 6,014 tok/s (+8%): decode turns from compute to memory bound as the KV cache grows.
    assert within(static_batch_throughput(Roofline(LLAMA_2_7B, A100), 384, 128, 128), 5586)


def test_trtllm_a100_llama7b_prefill_heavy_throughput():
    # Peak throughput, A100 FP16, LLaMA 7B, batch 52, TP 1, 2048 in / 128 out: 591 out tok/s.
    # Predicted 486 tok/s (-18%): dominated by 52 compute-bound 2048-token prefills.
    assert within(static_batch_throughput(Roofline(LLAMA_2_7B, A100), 52, 2048, 128), 591)


def test_vllm_a100_40gb_llama3_8b_batch1_decode():
    # johnmusgrave.com/p/vllm-throughput-latency-sweep-on: vLLM 0.23, Llama-3.1-8B-Instruct BF16 on one
    # A100 40GB, 1024 in / 128 out, concurrency 1: "decode ... runs at about 75 tokens/sec".
    # Predicted 71 tok/s (-5%) at the mid-generation context of 1088 tokens.
    tokens_per_second = 1 / Roofline(LLAMA_3_8B, A100_40GB).iteration_time(0, 1, 1088)
    assert within(tokens_per_second, 75)


def test_vllm_h100_llama3_8b_batch1_decode():
    # yobitelcomm.github.io/bench/recipes/concurrency-sweep: vLLM 0.21, Llama-3.1-8B-Instruct fp16 on one
    # H100-80GB-HBM3, concurrency 1: tpot_p50 6.48 ms (short chat prompts; context assumed ~512).
    # Predicted 7.0 ms (+8%).
    assert within(Roofline(LLAMA_3_8B, H100).iteration_time(0, 1, 512), 0.00648)


# --------------------------------------------------------------------------- roofline shape


def test_decode_time_grows_with_context():
    roofline = Roofline(LLAMA_3_8B, H100)
    times = [roofline.iteration_time(0, 8, 8 * context) for context in (128, 1024, 4096, 8192)]
    assert times == sorted(times) and times[-1] > times[0] * 1.1


def test_prefill_is_compute_bound_at_large_token_counts():
    base = Roofline(LLAMA_3_8B, A100).iteration_time(4096, 0, 0)
    more_bandwidth = Roofline(LLAMA_3_8B, A100.model_copy(update={"memory_bandwidth": 2 * A100.memory_bandwidth}))
    more_flops = Roofline(LLAMA_3_8B, A100.model_copy(update={"peak_flops": 2 * A100.peak_flops}))
    assert more_bandwidth.iteration_time(4096, 0, 0) == pytest.approx(base)
    assert more_flops.iteration_time(4096, 0, 0) < 0.55 * base


def test_decode_is_memory_bound_at_batch_one():
    base = Roofline(LLAMA_3_8B, A100).iteration_time(0, 1, 1024)
    more_bandwidth = Roofline(LLAMA_3_8B, A100.model_copy(update={"memory_bandwidth": 2 * A100.memory_bandwidth}))
    more_flops = Roofline(LLAMA_3_8B, A100.model_copy(update={"peak_flops": 2 * A100.peak_flops}))
    assert more_flops.iteration_time(0, 1, 1024) == pytest.approx(base)
    assert more_bandwidth.iteration_time(0, 1, 1024) < 0.6 * base


def test_batching_raises_throughput_sublinearly():
    roofline = Roofline(LLAMA_3_8B, A100)

    def throughput(batch: int) -> float:
        return batch / roofline.iteration_time(0, batch, batch * 1024)

    rates = [throughput(batch) for batch in (1, 8, 64, 256)]
    assert rates == sorted(rates)
    assert rates[1] > 5 * rates[0]  # nearly free while memory bound
    assert rates[3] < 256 * rates[0] * 0.5  # far from linear once KV reads and compute dominate


@pytest.mark.parametrize("prefill, decode, context", [(0, 1, 1024), (0, 64, 64 * 1024), (2048, 0, 0)])
def test_tensor_parallel_is_faster_but_sublinear(prefill: int, decode: int, context: int):
    one = Roofline(LLAMA_3_8B, A100).iteration_time(prefill, decode, context)
    two = Roofline(LLAMA_3_8B, A100, tensor_parallel=2).iteration_time(prefill, decode, context)
    assert one / 2 < two < one


def test_tensor_parallel_costs_more_on_a_slow_interconnect():
    pcie = A100.model_copy(update={"interconnect_bandwidth": 32e9})
    nvlink = Roofline(LLAMA_3_8B, A100, tensor_parallel=4).iteration_time(4096, 0, 0)
    assert Roofline(LLAMA_3_8B, pcie, tensor_parallel=4).iteration_time(4096, 0, 0) > nvlink * 1.2


def test_empty_iteration_takes_no_time():
    assert Roofline(LLAMA_3_8B, A100).iteration_time(0, 0, 0) == 0.0


# --------------------------------------------------------------------------- decode stretches


def table_model() -> TableModel:
    """A profile with a negative slope inside the grid and one at its edge (noisy measurements)."""
    return TableModel(
        PerfProfile(
            device="cpu-fp32",
            model="qwen2.5-1.5b",
            prefill={"tokens": [16, 128, 512], "seconds": [0.05, 0.2, 0.7]},
            decode={
                "batch_sizes": [1, 4, 16],
                "context_tokens": [128, 1024, 1500, 4096],
                "seconds": [[0.03, 0.04, 0.039, 0.06], [0.04, 0.05, 0.06, 0.09], [0.06, 0.09, 0.1, 0.095]],
            },
        )
    )


MODELS_UNDER_TEST: dict[str, PerfModel] = {
    "roofline": Roofline(LLAMA_3_8B, A100),
    "roofline-tp2": Roofline(LLAMA_3_8B, H100, tensor_parallel=2),
    "table": table_model(),
}


def summed(model: PerfModel, seqs: int, context: int, steps: int) -> float:
    return sum(model.iteration_time(0, seqs, context + k * seqs) for k in range(steps))


@pytest.mark.parametrize("name", MODELS_UNDER_TEST)
@settings(max_examples=60, deadline=None)
@given(seqs=st.integers(1, 300), context_per_seq=st.integers(0, 6000), steps=st.integers(0, 2500))
def test_decode_stretch_equals_step_by_step_sum(name: str, seqs: int, context_per_seq: int, steps: int):
    model = MODELS_UNDER_TEST[name]
    stretch = model.decode_stretch_time(seqs, seqs * context_per_seq, steps)
    assert stretch == pytest.approx(summed(model, seqs, seqs * context_per_seq, steps), rel=1e-9, abs=1e-12)


def test_stretch_crossing_from_compute_to_memory_bound_is_exact():
    # 256 sequences on an A100 start compute bound (~22 ms) and turn memory bound as KV grows.
    roofline = Roofline(LLAMA_3_8B, A100)
    first, last = roofline.iteration_time(0, 256, 256 * 10), roofline.iteration_time(0, 256, 256 * 3000)
    assert last > 2 * first
    assert roofline.decode_stretch_time(256, 2560, 3000) == pytest.approx(summed(roofline, 256, 2560, 3000), rel=1e-9)


@pytest.mark.parametrize("name", MODELS_UNDER_TEST)
@settings(max_examples=60, deadline=None)
@given(seqs=st.integers(1, 300), context_per_seq=st.integers(0, 6000), steps=st.integers(0, 2500))
def test_steps_within_inverts_decode_stretch_time(name: str, seqs: int, context_per_seq: int, steps: int):
    model = MODELS_UNDER_TEST[name]
    context = seqs * context_per_seq
    done = model.decode_stretch_time(seqs, context, steps)
    after_next = model.decode_stretch_time(seqs, context, steps + 1)
    assert model.steps_within(seqs, context, done) == steps
    assert model.steps_within(seqs, context, (done + after_next) / 2) == steps


def test_steps_within_before_any_step():
    roofline = Roofline(LLAMA_3_8B, A100)
    assert roofline.steps_within(4, 4096, 0.0) == 0
    assert roofline.steps_within(4, 4096, -1.0) == 0
    assert roofline.steps_within(4, 4096, 0.5 * roofline.iteration_time(0, 4, 4096)) == 0


def test_stretch_needs_a_decoding_sequence():
    with pytest.raises(ValueError, match="at least one decoding sequence"):
        Roofline(LLAMA_3_8B, A100).decode_stretch_time(0, 0, 10)


# --------------------------------------------------------------------------- calibrated tables


def test_table_interpolates_clamps_and_extrapolates():
    table = table_model()
    assert table.iteration_time(128, 0, 0) == pytest.approx(0.2)
    assert table.iteration_time(320, 0, 0) == pytest.approx(0.45)  # halfway between 128 and 512
    assert table.iteration_time(1, 0, 0) == pytest.approx(0.05)  # clamped below the grid
    assert table.iteration_time(896, 0, 0) == pytest.approx(1.2)  # last slope extended
    assert table.iteration_time(0, 4, 4 * 1024) == pytest.approx(0.05)
    assert table.iteration_time(0, 10, 10 * 576) == pytest.approx(0.06)  # mean of the 4 corners around (10, 576)
    assert table.iteration_time(0, 1, 10) == pytest.approx(0.03)
    assert table.iteration_time(0, 16, 16 * 8192) == pytest.approx(0.095)  # negative slope floored at 0
    assert table.iteration_time(16, 4, 4 * 1024) == pytest.approx(0.05 + 0.05)  # prefill + decode


def test_table_round_trips_through_json(tmp_path: Path):
    table = table_model()
    path = tmp_path / "profile.json"
    table.to_json(path)
    loaded = TableModel.from_json(path)
    assert loaded.profile == table.profile
    assert loaded.iteration_time(200, 3, 3 * 2000) == table.iteration_time(200, 3, 3 * 2000)


def write_profile(tmp_path: Path, **changes: object) -> Path:
    data = table_model().profile.model_dump(mode="json")
    data.update(changes)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"prefill": {"tokens": [16, 128], "seconds": [0.05, -0.2]}},
            "prefill.seconds.1: expected greater than 0",
        ),
        ({"prefill": {"tokens": [128, 16], "seconds": [0.05, 0.2]}}, "prefill: tokens must be strictly increasing"),
        (
            {"decode": {"batch_sizes": [1, 2], "context_tokens": [1, 2], "seconds": [[0.1, 0.2], [0.1]]}},
            "decode: seconds row 1 has 1 entries but context_tokens has 2",
        ),
        ({"decode": {"batch_sizes": [1, 2], "context_tokens": [1, 2]}}, "decode.seconds: required field is missing"),
        ({"tensor_paralel": 2}, "tensor_paralel: unknown field"),
        ({"version": 2}, "version: expected 1"),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path: Path, changes: dict[str, object], message: str):
    path = write_profile(tmp_path, **changes)
    with pytest.raises(SpecError) as error:
        TableModel.from_json(path)
    assert f"{path}: {message}" in str(error.value)


def test_unreadable_or_malformed_profile(tmp_path: Path):
    with pytest.raises(SpecError, match="missing.json: cannot read profile"):
        TableModel.from_json(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1,')
    with pytest.raises(SpecError, match=r"broken.json: not valid JSON at line 1, column 15"):
        TableModel.from_json(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(SpecError, match="list.json: expected a JSON object"):
        TableModel.from_json(listed)


# --------------------------------------------------------------------------- capacity and selection


def test_kv_capacity():
    tokens = kv_capacity_tokens(LLAMA_3_8B, H100, 1, 0.9)
    # (80 GB - 16.06 GB of bf16 weights) * 0.9 / 128 KiB a token (32 layers x 8 heads x 128 x 2 x 2 bytes)
    assert tokens == int((80e9 - 8.03e9 * 2) * 0.9 / 131072)
    assert kv_capacity_tokens(LLAMA_3_8B, H100, 2, 0.9) > 2 * tokens  # the weights are paid once


def test_kv_capacity_when_weights_do_not_fit():
    with pytest.raises(ValueError, match=r"weights \(141.2 GB .*\) do not fit in 1 x 24.0 GB"):
        kv_capacity_tokens(MODELS["llama-3-70b"], DEVICES["L4"], 1, 0.9)
    assert kv_capacity_tokens(MODELS["llama-3-70b"], A100, 2, 0.9) > 0


def topology(profiles: dict[str, str], model: str = "qwen2.5-1.5b", base_dir: Path | None = None) -> TopologySpec:
    rack = {"name": "r", "device": "cpu-fp32", "devices_per_node": 2}
    zone = {"name": "z", "racks": [rack]}
    return TopologySpec.model_validate(
        {
            "name": "t",
            "model": model,
            "profiles": profiles,
            "providers": [{"name": "p", "regions": [{"name": "g", "zones": [zone]}]}],
        },
        context={"base_dir": str(base_dir)} if base_dir else None,
    )


def test_perf_model_for_prefers_a_profile(tmp_path: Path):
    table_model().to_json(tmp_path / "cpu.json")
    chosen = perf_model_for(topology({"cpu-fp32": "cpu.json"}, base_dir=tmp_path), "cpu-fp32", 1)
    assert isinstance(chosen, TableModel)
    fallback = perf_model_for(topology({}), "cpu-fp32", 1)
    assert isinstance(fallback, Roofline) and fallback.device == DEVICES["cpu-fp32"]


@pytest.mark.parametrize(
    "model, device, tp, message",
    [
        ("llama-3-8b", "cpu-fp32", 1, "model: profile was measured with 'qwen2.5-1.5b'"),
        ("qwen2.5-1.5b", "cpu-int8", 1, "device: profile was measured on 'cpu-fp32'"),
        ("qwen2.5-1.5b", "cpu-fp32", 2, "tensor_parallel: profile was measured at 1"),
    ],
)
def test_perf_model_for_rejects_a_mismatched_profile(tmp_path: Path, model: str, device: str, tp: int, message: str):
    table_model().to_json(tmp_path / "cpu.json")
    with pytest.raises(SpecError, match=message):
        perf_model_for(topology({device: "cpu.json"}, model=model, base_dir=tmp_path), device, tp)


# --------------------------------------------------------------------------- newer devices
# H200, B200, MI300X and L40S carry datasheet constants (testbed/catalog.py). No published serving
# figure pins them here, so these hold the roofline to what the datasheets imply: decode at batch 1
# scales with memory bandwidth, long prefills with compute, and memory decides what fits.


def test_h200_decodes_faster_than_h100_by_its_bandwidth_and_prefills_alike():
    h100, h200 = Roofline(LLAMA_3_8B, H100), Roofline(LLAMA_3_8B, DEVICES["H200"])
    speedup = h100.iteration_time(0, 1, 1024) / h200.iteration_time(0, 1, 1024)
    assert 1.25 < speedup < 4.8 / 3.35  # the step overhead keeps it under the bandwidth ratio
    assert h200.iteration_time(4096, 0, 0) == pytest.approx(h100.iteration_time(4096, 0, 0), rel=0.01)


def test_newer_devices_rank_by_their_datasheets():
    def decode(name: str) -> float:
        return Roofline(LLAMA_3_8B, DEVICES[name]).iteration_time(0, 1, 1024)

    def prefill(name: str) -> float:
        return Roofline(LLAMA_3_8B, DEVICES[name]).iteration_time(4096, 0, 0)

    assert decode("B200") < decode("MI300X") < decode("H200") < decode("H100")
    assert decode("A100") < decode("L40S") < decode("L4")
    assert prefill("B200") < prefill("MI300X") < prefill("H100")
    assert prefill("L40S") < prefill("A100")  # 362 against 312 TFLOP/s


def test_large_memory_devices_hold_a_70b_model_on_one_device():
    llama_70b = MODELS["llama-3-70b"]  # 141.2 GB of bf16 weights
    for name in ("MI300X", "B200"):
        assert kv_capacity_tokens(llama_70b, DEVICES[name], 1, 0.9) > 100_000, name
    for name in ("H200", "L40S"):  # 141 GB and 48 GB: the weights alone do not fit
        with pytest.raises(ValueError, match="do not fit"):
            kv_capacity_tokens(llama_70b, DEVICES[name], 1, 0.9)


def test_a_topology_names_the_newer_devices():
    topology = TopologySpec.model_validate({
        "name": "new-gpus", "model": "llama-3-8b",
        "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
            {"name": f"rack-{kind.lower()}", "nodes": 1, "device": kind, "devices_per_node": 8}
            for kind in ("H200", "B200", "MI300X", "L40S")]}]}]}],
    })
    for kind in ("H200", "B200", "MI300X", "L40S"):
        assert isinstance(perf_model_for(topology, kind, 1), Roofline)
