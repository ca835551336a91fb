"""`python -m training.validate --backend sasrec --artifacts DIR`: the check a checkpoint trained in the background
must pass before the gateway serves it (the job runner, service/jobs.py, runs this on the job's staged artifacts):
it loads through the same registry the gateway uses, and its figure on the held-out test split is not below its
floor. Floors live with the other expected figures (training/eval/expected.yaml, `acceptance`); `--floor` overrides
one (tests, or a stricter deployment). Prints one JSON line {backend, task, metric, value, floor, n, accepted};
exit status 0 when accepted, 1 when rejected (2: bad arguments).

    python -m training.validate --backend sasrec --artifacts artifacts/v1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.common import add_threads_arg, set_threads
from training.eval.expected import expected


def acceptance(backend: str) -> dict:
    table = expected()["acceptance"]
    if backend not in table:
        raise KeyError(f"no acceptance floor for {backend!r} in training/eval/expected.yaml; known: {', '.join(table)}")
    return table[backend]


def validate_agent(artifacts: Path, data: Path, limit: int | None) -> tuple[float, int]:
    """Answer EM of the EM-trained loop (its last round, as served) on the first `limit` test questions."""
    from indexing.data import load_multihop
    from models.exsearch.loop import SearchAgent, load_trained
    from models.registry import load_backend
    from training.eval.agent import run_loop

    mh = load_multihop(data / "strategyqa")
    questions = mh.split("test")[:limit] if limit else mh.split("test")
    model, tok, cfg, _ = load_trained(artifacts / "agent")  # as the gateway serves it (service/agentic.py)
    row = run_loop("agent", SearchAgent(model, tok, load_backend(artifacts, "retrieve", "bm25"), mh, cfg), questions)
    return row["em"], row["n"]


def validate(backend: str, artifacts: Path, data: Path = Path("data"), floor: float | None = None) -> dict:
    spec = acceptance(backend)
    task, metric, limit = spec["task"], spec["metric"], spec.get("limit")
    if backend == "agent":
        value, n = validate_agent(artifacts, data, limit)
    else:
        from models.registry import load_backend
        from training.eval.ranking import default_data_dirs, evaluate_ranking

        result = evaluate_ranking(task, load_backend(artifacts, task, backend), "test", default_data_dirs(data),
                                  limit, options=spec.get("options"), timed=False)
        value, n = result[metric], result["queries"]
    floor = spec["floor"] if floor is None else floor
    return {"backend": backend, "task": task, "metric": metric, "value": round(float(value), 4), "floor": floor,
            "n": n, "accepted": bool(value >= floor)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True, help="a backend with an acceptance floor: sasrec, diffugr, gems, agent")
    p.add_argument("--artifacts", type=Path, required=True, help="the artifacts directory holding the checkpoint")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--floor", type=float, default=None, help="override the floor in expected.yaml")
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    try:
        verdict = validate(a.backend, a.artifacts, a.data, a.floor)
    except KeyError as e:
        p.error(str(e.args[0]))
    print(json.dumps(verdict))
    return 0 if verdict["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
