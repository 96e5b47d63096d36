"""Built-in device and model descriptions, with where each number comes from.

The roofline model in :mod:`testbed.perf` needs, per device, peak dense FLOP/s at the serving
precision, memory bandwidth and memory size; per model, parameter count and the shape of its
KV cache. These are vendor datasheet and model-card numbers, not measurements: the efficiency
factors that turn peaks into achievable speed live with each device and are documented there.
Topologies may add their own kinds under ``devices:`` or ``models:``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class DeviceKind(BaseModel):
    """An accelerator or CPU host as the performance model sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peak_flops: PositiveFloat = Field(description="dense FLOP/s at the serving precision")
    memory_bandwidth: PositiveFloat = Field(description="bytes/s of device memory bandwidth")
    memory_bytes: PositiveFloat = Field(description="device memory in bytes")
    compute_efficiency: float = Field(0.6, gt=0, le=1, description="achievable share of peak FLOP/s (MFU) in prefill")
    bandwidth_efficiency: float = Field(0.8, gt=0, le=1, description="achievable share of bandwidth (MBU) in decode")
    interconnect_bandwidth: PositiveFloat = Field(
        300e9, description="bytes/s per device for tensor-parallel all-reduce (NVLink, PCIe, or memory for CPUs)"
    )
    step_overhead: float = Field(
        0.001, ge=0, description="seconds of fixed cost per iteration (kernel launches, scheduling, sampling)"
    )
    weight_bytes_per_param: float = Field(2.0, gt=0, description="2 for fp16/bf16, 1 for int8, 4 for fp32")
    fallback: bool = Field(False, description="a degraded tier (e.g. CPU int8): requests it serves are flagged")


class ModelKind(BaseModel):
    """A decoder-only transformer as the performance model sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: PositiveFloat = Field(description="parameter count")
    layers: PositiveInt
    hidden: PositiveInt
    kv_heads: PositiveInt = Field(description="key/value heads (GQA groups)")
    head_dim: PositiveInt
    kv_bytes_per_value: float = Field(2.0, gt=0, description="bytes per cached key or value element")
    max_context: PositiveInt = 8192

    @property
    def kv_bytes_per_token(self) -> float:
        """Keys and values, every layer: 2 * layers * kv_heads * head_dim * bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes_per_value


# Datasheet numbers. Dense (no sparsity) tensor throughput at bf16 for GPUs:
#   H100 SXM5 80GB: 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3, NVLink 900 GB/s (NVIDIA H100 datasheet).
#   A100 SXM4 80GB: 312 TFLOP/s bf16 dense, 2.039 TB/s HBM2e, NVLink 600 GB/s (NVIDIA A100 datasheet).
#   L4 24GB:        121 TFLOP/s bf16 dense, 300 GB/s GDDR6, PCIe Gen4 x16 ~32 GB/s (NVIDIA L4 datasheet).
#   H200 SXM 141GB: 989 TFLOP/s bf16 dense (1,979 is with sparsity), 4.8 TB/s HBM3e, NVLink 900 GB/s
#                   (NVIDIA H200 Tensor Core GPU datasheet): the H100's compute with more and faster memory.
#   B200 180GB:     2.25 PFLOP/s bf16 dense (4.5 with sparsity), 8 TB/s HBM3e, NVLink 5 1.8 TB/s (NVIDIA
#                   HGX B200 spec sheet; the DGX B200 datasheet's 1,440 GB and 64 TB/s over 8 GPUs agree).
#   MI300X 192GB:   1,307.4 TFLOP/s bf16 dense (2,614.9 with sparsity), 5.3 TB/s HBM3, 7 Infinity Fabric
#                   links of 128 GB/s = 896 GB/s peer-to-peer (AMD Instinct MI300X data sheet).
#   L40S 48GB:      362 TFLOP/s bf16 dense (733 with sparsity), 864 GB/s GDDR6, PCIe Gen4 x16 64 GB/s both
#                   ways (NVIDIA L40S datasheet).
# Like H100's 900 GB/s NVLink entered as 450e9, interconnects are entered one way (half the quoted
# bidirectional figure), which is what a ring all-reduce step moves per device. The efficiency
# defaults below were fitted to published A100 and H100 figures only: for B200, MI300X and L40S they
# are an assumption (the software stacks differ), so calibrate before trusting fine differences.
# CPU hosts: a 2-socket server with 16 DDR5-4800 channels has ~614 GB/s peak (38.4 GB/s a channel);
# AMX-capable Xeons reach a few hundred TFLOP/s int8/bf16 in theory, far less in practice, so the
# CPU entries use conservative achievable figures and a larger per-step overhead.
# Efficiency defaults (compute 0.6, bandwidth 0.8, 1 ms a step) are fitted to published GPU serving
# figures, which tests/test_perf.py checks the roofline against (within 25%):
# - decode at batch 1 runs at 75-80% of memory bandwidth including per-step overhead: vLLM serves
#   Llama-3.1-8B bf16 at ~75 tok/s on an A100-40GB ("~77% of the memory-bandwidth ceiling",
#   johnmusgrave.com/p/vllm-throughput-latency-sweep-on) and at 6.48 ms TPOT on an H100
#   (yobitelcomm.github.io/bench/recipes/concurrency-sweep); TensorRT-LLM's batch-60 LLaMA-7B
#   throughput on A100 (1,928 tok/s, 128 in / 2048 out, docs/source/performance.md) is KV-read bound
#   and fits the same 0.8. The earlier 0.75 with 4 ms a step was 16-60% slow on all three: modern
#   engines (CUDA graphs, vLLM V1) spend well under a millisecond a step outside the GPU kernels.
# - prefill: TensorRT-LLM's first-token latency for LLaMA-7B at 2048 tokens on A100 (133 ms) implies
#   ~69% MFU; 0.6 leaves room for engines less tuned than TensorRT-LLM. The earlier 0.5 was 41% slow.
DEVICES: dict[str, DeviceKind] = {
    "H100": DeviceKind(
        peak_flops=989e12, memory_bandwidth=3.35e12, memory_bytes=80e9, interconnect_bandwidth=450e9
    ),
    "A100": DeviceKind(
        peak_flops=312e12, memory_bandwidth=2.039e12, memory_bytes=80e9, interconnect_bandwidth=300e9
    ),
    "L4": DeviceKind(
        peak_flops=121e12, memory_bandwidth=300e9, memory_bytes=24e9, interconnect_bandwidth=32e9
    ),
    "H200": DeviceKind(
        peak_flops=989e12, memory_bandwidth=4.8e12, memory_bytes=141e9, interconnect_bandwidth=450e9
    ),
    "B200": DeviceKind(
        peak_flops=2.25e15, memory_bandwidth=8e12, memory_bytes=180e9, interconnect_bandwidth=900e9
    ),
    "MI300X": DeviceKind(
        peak_flops=1307.4e12, memory_bandwidth=5.3e12, memory_bytes=192e9, interconnect_bandwidth=448e9
    ),
    "L40S": DeviceKind(
        peak_flops=362e12, memory_bandwidth=864e9, memory_bytes=48e9, interconnect_bandwidth=32e9
    ),
    "cpu-fp32": DeviceKind(
        peak_flops=4e12,
        memory_bandwidth=614e9,
        memory_bytes=512e9,
        compute_efficiency=0.3,
        bandwidth_efficiency=0.5,
        interconnect_bandwidth=100e9,
        step_overhead=0.01,
        weight_bytes_per_param=4.0,
        fallback=True,
    ),
}
# The int8 tier is the fp32 host with weights quantized: a quarter of the bytes to stream per
# token and twice the arithmetic rate (VNNI/AMX int8), everything else the same.
DEVICES["cpu-int8"] = DEVICES["cpu-fp32"].model_copy(update={"peak_flops": 8e12, "weight_bytes_per_param": 1.0})

# Model-card shapes. Llama 3 8B: 32 layers, hidden 4096, 8 KV heads of 128 (GQA);
# Llama 3 70B: 80 layers, hidden 8192, 8 KV heads of 128; Llama 2 7B: 32 layers, 32 KV heads of 128.
MODELS: dict[str, ModelKind] = {
    "llama-3-8b": ModelKind(params=8.03e9, layers=32, hidden=4096, kv_heads=8, head_dim=128),
    "llama-3-70b": ModelKind(params=70.6e9, layers=80, hidden=8192, kv_heads=8, head_dim=128),
    "llama-2-7b": ModelKind(params=6.74e9, layers=32, hidden=4096, kv_heads=32, head_dim=128, max_context=4096),
    "qwen2.5-1.5b": ModelKind(params=1.54e9, layers=28, hidden=1536, kv_heads=2, head_dim=128),
    # The live plane's built-in fp32 models (testbed/live/replica/models.py RECIPES), so that a topology
    # replayed live can name the model its replicas really run and a calibrated profile for it.
    "tiny": ModelKind(params=4.21e6, layers=4, hidden=256, kv_heads=4, head_dim=64, kv_bytes_per_value=4.0, max_context=512),
    "small": ModelKind(params=81.0e6, layers=12, hidden=768, kv_heads=12, head_dim=64, kv_bytes_per_value=4.0, max_context=1024),
}
