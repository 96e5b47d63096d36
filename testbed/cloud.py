"""Built-in cloud constants for elastic fleets: how long a replica takes to come up, what it costs.

A replica that did not exist a moment ago pays a chain of delays before it answers (see
:mod:`testbed.policy.lifecycle`): the provider hands over a node, the serving image is pulled,
the weights stream from storage, the engine warms up. Each constant below is a published figure
or a round number taken from one, with its source; a scenario's ``elastic.lifecycle`` overrides
any of them. They are defaults for *what-if* questions, not measurements of your cloud: measure
yours (the live plane's calibration measures process start and model load) and set them.

Sources:

* Node acquisition: AWS documents no launch-time SLA; GPU instances typically pass ``running``
  and their status checks in 1–3 minutes, and serverless-GPU vendors quote 10–60 s to provision an
  instance when capacity is warm (paralleliq.ai, "Serverless GPU cold start latency", phase
  table: "instance provisioning 10–60 s"). Kubernetes on top (Karpenter / cluster autoscaler)
  adds node registration and GPU driver/device-plugin start: 2–5 minutes end to end is the
  common experience. We take 180 s for AWS and Azure, 150 s for GCP, 30 s on premises (a node
  that is already racked and only needs the pod scheduled).
* Image pull: a vLLM/TensorRT-LLM image is 10–20 GB; an uncached pull takes 30–60 s on a fast
  registry and several minutes on a slow one (kunwar.page "The model cold-start problem", 52.1:
  "typically 30–60 seconds for a fresh pull"). We take 45 s.
* Weight loading: model bytes over storage bandwidth. In-region object storage delivers about
  1 GB/s to one instance (kunwar.page 52.1: "At 1 GB/s download (typical for cloud-managed S3 in
  the same region)"); local NVMe 2–3 GB/s (spheron.network, "weight load from storage ...
  NVMe bandwidth"). We take 1 GB/s (``STORAGE_BANDWIDTH``).
* Warm-up: CUDA context, CUDA-graph capture and first batches: ~12 s for an 8B model and ~30 s
  for 70B (spheron.network, "Anatomy of a GPU cold start" table). We take 20 s on GPUs and 2 s
  on CPU hosts (no graphs to capture).
* Spot notice: AWS issues an interruption notice two minutes before it stops a Spot Instance
  (docs.aws.amazon.com, "Spot Instance interruption notices"); GCP gives Spot and preemptible VMs
  30 seconds (cloud.google.com/compute/docs/instances/spot, "Preemption process").
* Drain: Kubernetes' default ``terminationGracePeriodSeconds`` is 30 s.
* Prices ($ per device-hour, on demand): AWS us-east-1 list prices divided by the instance's
  devices — p5.48xlarge (8x H100) $98.32/h -> $12.29; p4de.24xlarge (8x A100 80GB) $40.97/h ->
  $5.12; g6.xlarge (1x L4) $0.805/h; a 2-socket CPU host (m7i.48xlarge, 192 vCPU) $9.68/h. Spot
  prices move; ``SPOT_PRICE_FACTOR`` 0.35 (65% off) is a round figure inside AWS's "up to 90%
  off" and should be replaced by the price you pay.
"""

from __future__ import annotations

PROVISIONING_SECONDS: dict[str, float] = {"aws": 180.0, "azure": 180.0, "gcp": 150.0, "onprem": 30.0, "local": 30.0}
DEFAULT_PROVISIONING_SECONDS = 180.0
IMAGE_PULL_SECONDS = 45.0
STORAGE_BANDWIDTH = 1e9  # bytes/s from in-region object storage to one instance
WARMUP_SECONDS: dict[str, float] = {"gpu": 20.0, "cpu": 2.0}
SPOT_NOTICE_SECONDS: dict[str, float] = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}
DEFAULT_SPOT_NOTICE_SECONDS = 30.0  # the shortest of the three: assume the worst for unknown providers
DRAIN_TIMEOUT_SECONDS = 30.0
PRICE_PER_DEVICE_HOUR: dict[str, float] = {
    "H100": 98.32 / 8,
    "A100": 40.97 / 8,
    "L4": 0.805,
    "cpu-fp32": 9.68,
    "cpu-int8": 9.68,
}
DEFAULT_PRICE_PER_DEVICE_HOUR = 5.0  # a device kind the table does not know: set elastic.cost.prices
SPOT_PRICE_FACTOR = 0.35


def provisioning_seconds(provider: str) -> float:
    """Node acquisition time for ``provider`` (a topology provider name such as ``aws``)."""
    return PROVISIONING_SECONDS.get(provider, DEFAULT_PROVISIONING_SECONDS)


def spot_notice_seconds(provider: str) -> float:
    """How long before a spot replica is reclaimed its provider says so."""
    return SPOT_NOTICE_SECONDS.get(provider, DEFAULT_SPOT_NOTICE_SECONDS)


def warmup_seconds(fallback_device: bool) -> float:
    """Engine warm-up: CUDA graphs on a GPU, next to nothing on a CPU host."""
    return WARMUP_SECONDS["cpu" if fallback_device else "gpu"]
