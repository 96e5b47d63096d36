"""The replica's weights switch: serve from float32 or int8 weights, changed over HTTP at run time.

Dynamic quantization as a degradation step: under overload or capacity loss a replica can
trade answer quality for speed (int8 dynamic quantization runs the small model's steps ~2-3x
faster on a CPU) and switch back when the pressure is gone. ``GET /weights`` says what the
replica serves from; ``POST /weights`` with ``{"weights": "int8"}`` (or ``"float32"``) switches
between two model steps and answers with the time the switch took. The measured quality cost
(next-token agreement and perplexity against float32) is in ``benchmarks/quantization_quality.py``.

Like the ``/chaos`` hooks this is a control route, not part of the OpenAI API: a live driver (a
test, the fault injector, a degradation policy's actuator) calls it.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from testbed.live.openai_schema import RequestError, parse_request


class WeightsPatch(BaseModel):
    """A ``POST /weights`` body; unknown fields are errors (typos)."""

    model_config = ConfigDict(extra="forbid")

    weights: Literal["float32", "int8"]


def control_router(engine) -> APIRouter:
    """Routes that drive ``engine`` (the built-in :class:`~testbed.live.replica.engine.Engine`)."""
    router = APIRouter()

    def state(seconds: float | None = None) -> dict:
        body: dict = {"weights": engine.weights}
        if seconds is not None:
            body["switch_seconds"] = round(seconds, 6)
        return body

    @router.get("/weights")
    async def weights_get() -> dict:
        return state()

    @router.post("/weights")
    async def weights_post(request: Request) -> dict:
        patch = parse_request(WeightsPatch, await request.body())
        if not engine.running:
            raise RequestError("the engine is not running", 503, "service_unavailable", code="engine_unavailable")
        return state(await engine.set_weights(patch.weights))

    return router
