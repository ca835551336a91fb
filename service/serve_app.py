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

Heavy backends as their own deployments (`args.backends`, e.g. ["retrieve/diffugr", "recommend/gems"]): each is a
BackendServer deployment (its own replicas and autoscaling bounds in the config file, `@serve.batch` gathering the
requests of every gateway replica into one backend call), composed with the gateway through deployment handles.
The gateway's engine sees them as service.remote.RemoteBackend: the same fallback, budget and busy rules; the
deployment plans steps / beam for each request's budget and drops requests whose deadline passed. A backend named
there whose artifacts are missing is skipped (the gateway substitutes as usual). Each answer's config carries
`served_by` (host:pid of the deployment replica).
"""
from __future__ import annotations

from typing import Any

from ray import serve

from models.artifacts import artifact_dir
from models.registry import BACKENDS, load_backend
from service.app import create_app, served_settings
from service.middleware import instance
from service.remote import RemoteBackend, answer_items_async
from service.settings import Settings

# (task, name) -> RemoteBackend of this gateway replica, filled by Gateway.__init__ before the app's lifespan runs
REMOTE: dict[tuple[str, str], RemoteBackend] = {}


def remote_backends() -> dict[tuple[str, str], RemoteBackend]:
    return dict(REMOTE)


def set_remote(handles: dict | None) -> None:
    """Called by the gateway replica's constructor. A module-level function on purpose: the Gateway class is
    built inside app_builder, so cloudpickle ships it by value, and a global it named directly would be a copy."""
    REMOTE.clear()
    for key, handle in (handles or {}).items():
        task, _, name = key.partition("/")
        REMOTE[(task, name)] = RemoteBackend(task, name, handle)


@serve.deployment(name="backend", max_ongoing_requests=32)  # a batch is at most settings.batch_max_size
class BackendServer:
    """One heavy backend in its own replicas: loads it, measures its cost (warm-up), answers batches."""

    def __init__(self, task: str, name: str, fields: dict):
        from service.engine import warmup_samples  # noqa: PLC0415 - imports torch-free modules only
        from service.stores.catalog import Catalog  # noqa: PLC0415

        settings = served_settings(Settings(**fields))
        self.task, self.name = task, name
        self.backend = load_backend(settings.artifacts_dir, task, name, **settings.backend_options.get(name, {}))
        self.instance = instance()
        self.answer.set_max_batch_size(settings.batch_max_size)
        self.answer.set_batch_wait_timeout_s(settings.batch_max_wait_ms / 1000.0)
        if settings.warmup:
            catalog = Catalog.load(settings.data_dir / "ml100k", settings.data_dir / "strategyqa-facts")
            sample = warmup_samples(catalog)[task]
            self.backend.answer([sample])  # untimed first call
            self.backend.warm_up(sample, repeats=5)

    def describe(self) -> dict:
        return {"task": self.task, "name": self.name, "cost_rank": self.backend.cost_rank,
                "ms_per_request": self.backend.ms_per_request, "instance": self.instance}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def answer(self, items: list[dict]) -> list[Any]:
        out = await answer_items_async(self.backend, items)
        for a in out:
            if not isinstance(a, Exception):
                a.config = {**a.config, "served_by": self.instance}
        return out


def backend_deployments(settings: Settings, backends: list[str] | dict[str, dict]) -> dict[str, Any]:
    """"task/name" -> a bound BackendServer (deployment "<task>-<name>"), for those whose artifacts exist.
    backends: the keys, or keys -> Serve deployment options (replicas, autoscaling, ray_actor_options, ...)."""
    options = backends if isinstance(backends, dict) else dict.fromkeys(backends)
    fields = settings.model_dump(exclude_unset=True)
    root = served_settings(settings).artifacts_dir
    bound = {}
    for key, opts in options.items():
        task, _, name = key.partition("/")
        if name not in BACKENDS or task not in BACKENDS[name][0]:
            raise ValueError(f"args.backends: {key!r} is not <task>/<backend> of models.registry.BACKENDS")
        if not (artifact_dir(root, task, name) / "meta.json").exists():
            continue  # not trained (yet): the gateway substitutes as for any missing backend
        bound[key] = BackendServer.options(name=f"{task}-{name}", **(opts or {})).bind(task, name, fields)
    return bound


def app_builder(args: dict):
    """Ray Serve application builder (`import_path: service.serve_app:app_builder`): args = {"settings": {...},
    "num_replicas": n (optional: a fixed count instead of the config file's autoscaling), "backends":
    ["task/name", ...] or {"task/name": {Serve deployment options}} (optional: heavy backends as deployments of
    their own)}."""
    args = args or {}
    settings = Settings(**{"run_jobs": False, **args.get("settings", {})})
    fastapi_app = create_app(settings, remote=remote_backends)

    # Serve's default of 5 ongoing requests per replica would queue most of a load in the proxy: the gateway is
    # asynchronous and admits by itself (budgets, UNISR_MAX_IN_FLIGHT)
    @serve.deployment(name="gateway", max_ongoing_requests=64)
    @serve.ingress(fastapi_app)
    class Gateway:
        """One gateway replica: Ray Serve runs the app's lifespan (models load, warm-up) in the replica, after
        this constructor has handed it the backends' deployment handles."""

        def __init__(self, handles: dict | None = None):
            set_remote(handles)

    handles = backend_deployments(settings, args.get("backends") or [])
    gateway = Gateway.options(num_replicas=int(args["num_replicas"])) if args.get("num_replicas") else Gateway
    return gateway.bind(handles)
