"""A Ray Serve application serving the built-in model: two replicas, adaptive batching with
``@serve.batch``, the OpenAI completions API — a stand-in for a user's own Ray Serve stack.

    python examples/ray_serve/app.py --port 8301

starts a local Ray cluster, deploys the application on 127.0.0.1:PORT, then serves until SIGTERM
or Ctrl-C. Besides ``/v1/completions`` and ``/health`` it answers ``/replicas`` with the
deployment's status as Ray Serve's controller reports it. Each replica loads the model testbed builds locally (:func:`testbed.live.replica.models.ensure_model`)
and runs it with the project's :class:`~testbed.live.replica.runner.ModelRunner` — batched prefill and
greedy decode on CPU. ``@serve.batch`` gathers concurrent requests into one batch (up to
``MAX_BATCH`` or ``BATCH_WAIT`` seconds); Ray Serve's own proxy routes to the replicas and its
controller replaces a replica that dies — the recovery a target run measures.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
import uuid

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_BATCH = 4
BATCH_WAIT = 0.01  # seconds


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16,
                  health_check_period_s=1, health_check_timeout_s=10)
class Completions:
    def __init__(self, model: str = "tiny") -> None:
        from testbed.live.replica.models import ensure_model
        from testbed.live.replica.runner import ModelRunner

        self.name = model
        self.runner = ModelRunner(ensure_model(model), threads=1)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT)
    async def generate(self, prompts: list[list[int]], budgets: list[int]) -> list[list[int]]:
        """Greedy decode of one batch; each row stops at its own max_tokens (ignore_eos, as the workload asks)."""
        kv, tokens = self.runner.prefill(prompts)
        outputs = [[t] for t in tokens]
        live = [i for i in range(len(prompts)) if budgets[i] > 1]
        kv.keep(live)
        tokens = [tokens[i] for i in live]
        while live:
            tokens = self.runner.decode(kv, tokens)
            for row, token in zip(live, tokens):
                outputs[row].append(token)
            keep = [k for k, row in enumerate(live) if len(outputs[row]) < budgets[row]]
            kv.keep(keep)
            live, tokens = [live[k] for k in keep], [tokens[k] for k in keep]
        return outputs

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/")
        if path.endswith("/health"):
            return JSONResponse({"status": "ok"})
        if path.endswith("/replicas"):
            # The deployment as Ray Serve's controller sees it (kill_replica.py --wait-recovered polls it).
            status = serve.status().applications["default"].deployments["Completions"]
            states = {str(getattr(k, "value", k)): n for k, n in status.replica_states.items()}
            return JSONResponse({"status": str(getattr(status.status, "value", status.status)), "replica_states": states})
        if not request.url.path.rstrip("/").endswith("/v1/completions"):
            return JSONResponse({"error": {"message": f"no route {request.url.path}"}}, status_code=404)
        body = await request.json()
        prompt = body.get("prompt", "")
        ids = list(prompt) if isinstance(prompt, list) else self.runner.encode(str(prompt))
        budget = max(1, int(body.get("max_tokens", 16)))
        out = await self.generate(ids, budget)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()), "model": self.name,
            "choices": [{"index": 0, "text": self.runner.decode_text(out), "finish_reason": "length"}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(out), "total_tokens": len(ids) + len(out)},
        })


app = Completions.bind()


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description="serve the built-in model through Ray Serve")
    parser.add_argument("--port", type=int, default=8301)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(app, name="default", route_prefix="/")
    print(f"READY url=http://127.0.0.1:{args.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
