"""What a run's fleet cost: device-hours and dollars, so reports can show goodput per dollar.

A replica is billed for its devices from the moment its node is granted (provisioning counts:
the provider bills the instance while the image pulls and the weights load) until it is gone.
Prices are per device-hour by device kind (:data:`testbed.cloud.PRICE_PER_DEVICE_HOUR`, with
sources), spot at ``spot_price_factor`` of on-demand; a scenario's ``elastic.cost`` overrides both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from testbed import cloud
from testbed.records.schema import latency_columns
from testbed.spec import CostSpec, Objective


@dataclass(slots=True)
class CostMeter:
    """Open and closed billing intervals per replica slot."""

    spec: CostSpec = field(default_factory=CostSpec)
    device_seconds: float = 0.0
    dollars: float = 0.0
    _open: dict[int, tuple[float, str, int, str]] = field(default_factory=dict)  # slot -> (since, device, n, market)

    def price(self, device: str, market: str) -> float:
        """$ per device-hour."""
        base = self.spec.prices.get(device, cloud.PRICE_PER_DEVICE_HOUR.get(device, cloud.DEFAULT_PRICE_PER_DEVICE_HOUR))
        return base * (self.spec.spot_price_factor if market == "spot" else 1.0)

    def start(self, slot: int, now: float, device: str, devices: int, market: str) -> None:
        if slot in self._open:
            raise ValueError(f"slot {slot} is already billed")
        self._open[slot] = (now, device, devices, market)

    def stop(self, slot: int, now: float) -> None:
        since, device, devices, market = self._open.pop(slot)
        seconds = (now - since) * devices
        self.device_seconds += seconds
        self.dollars += seconds / 3600.0 * self.price(device, market)

    def close(self, now: float) -> None:
        """End of the run: every open interval is billed up to ``now``."""
        for slot in sorted(self._open):
            self.stop(slot, now)

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600.0


def goodput(requests: pd.DataFrame, sla: Sequence[Objective]) -> int:
    """Requests answered within the scenario's first ``goodput`` objective's TTFT and TPOT limits
    (all answered requests when it has none): the numerator of goodput per dollar."""
    ok = (requests["status"] == "ok").to_numpy()
    objective = next((o for o in sla if o.metric == "goodput"), None)
    if objective is None:
        return int(ok.sum())
    latency = latency_columns(requests)
    within = (latency["ttft"] <= objective.ttft) & ~(latency["tpot"] > objective.tpot)  # NaN tpot: one token
    return int((ok & within.to_numpy()).sum())
