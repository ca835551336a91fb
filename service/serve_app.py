"""The gateway on Ray Serve: the same FastAPI app (service.app.create_app) as a Ray Serve ingress deployment,
replicated behind Ray's HTTP proxy. The plain uvicorn process (`python -m service`, `make serve`) stays the
embedded default; this is the path past one process and one machine.

    make serve-ray                                    # a local Ray head + `serve run deploy/ray/serve.yaml`
    serve run deploy/ray/serve.yaml                   # on a running cluster (RAY_ADDRESS or a local one)

Multi-node: `ray start --head --port 6379` on one machine, `ray start --address <head>:6379` on each other, the
same data/ and artifacts/ on every node (or a shared volume), then `serve deploy deploy/ray/serve.yaml
--address http://<head>:8265`: the config is the same file. Replicas, autoscaling bounds and per-replica limits
live in that file (deployment "gateway"); `args.settings` are Settings fields (UNISR_* still apply on the nodes).

Shared across replicas (Redis, settings.redis_url, which the config sets): the response cache, each user's recent
events and idempotency keys (POST /events), so every replica answers a user from the same history. Per replica:
the loaded models, the micro-batchers, the engine's admission counters (each replica admits against its own
queue), and the in-process fallbacks used only when Redis is unreachable. Every response names the process that
answered (X-Unisr-Instance: host:pid).
"""
from __future__ import annotations

from ray import serve

from service.app import create_app
from service.settings import Settings


def app_builder(args: dict):
    """Ray Serve application builder (`import_path: service.serve_app:app_builder`): args = {"settings": {...},
    "num_replicas": n (optional: a fixed count instead of the config file's autoscaling)}."""
    args = args or {}
    settings = Settings(**{"run_jobs": False, **args.get("settings", {})})
    fastapi_app = create_app(settings)

    @serve.deployment(name="gateway")
    @serve.ingress(fastapi_app)
    class Gateway:
        """One gateway replica: Ray Serve runs the app's lifespan (models load, warm-up) in the replica."""

    if args.get("num_replicas"):
        return Gateway.options(num_replicas=int(args["num_replicas"])).bind()
    return Gateway.bind()
