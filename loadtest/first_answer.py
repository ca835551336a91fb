"""`python -m loadtest.first_answer --repo PATH`: time a fresh `make serve` (the README's first command) on this
machine, from nothing but a clone: minutes until the first 200 of /search, /recommend and /retrieve, and until each
learned backend is served (its job published and swapped in, GET /admin/jobs). Loopback only; the run is bounded
by --limit-min. Writes a JSON file and prints the table the README shows.

    git clone <repo> /tmp/fresh && python -m loadtest.first_answer --repo /tmp/fresh --limit-min 120

Nothing is shared with this checkout: the clone gets its own venv, data and artifacts, and pip and the registry
packages are fetched with empty caches (PIP_NO_CACHE_DIR, UNISR_CACHE in the clone), as on a fresh machine.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

PROBES = {"/search": "/search?q=animation+comedy+1990s&k=5", "/recommend": "/recommend?user_id=1&k=5",
          "/retrieve": "/retrieve?q=what+is+the+boiling+point+of+water&k=5"}
TOKEN = "first-answer-timing"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="a fresh clone (nothing built in it)")
    p.add_argument("--port", type=int, default=8650)
    p.add_argument("--limit-min", type=float, default=120.0)
    p.add_argument("--out", type=Path, default=Path("results/first_answer.json"))
    a = p.parse_args(argv)
    env = {**os.environ, "UNISR_PORT": str(a.port), "UNISR_ADMIN_TOKEN": TOKEN, "PIP_NO_CACHE_DIR": "1",
           "UNISR_CACHE": str(a.repo / ".fresh-cache"), "UNISR_LOG_JSON": "true"}
    env = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "UNISR_ARTIFACTS_DIR", "UNISR_DATA_DIR")}
    t0 = time.monotonic()
    with open(a.repo / "first_answer.log", "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(["make", "serve"], cwd=a.repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    minutes = lambda: round((time.monotonic() - t0) / 60, 2)  # noqa: E731
    first: dict[str, float] = {}
    served: dict[str, dict] = {}
    result = {"first_200_min": first, "served_min": served}
    url = f"http://127.0.0.1:{a.port}"
    try:
        while time.monotonic() - t0 < a.limit_min * 60 and proc.poll() is None:
            time.sleep(5)
            for name, path in PROBES.items():
                if name in first:
                    continue
                try:
                    r = httpx.get(url + path, timeout=10)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    first[name] = minutes()
                    print(f"{first[name]:6.2f} min  first 200 on {name} (backend {r.json().get('backend')})",
                          flush=True)
            try:
                jobs = httpx.get(url + "/admin/jobs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
            except (httpx.HTTPError, ValueError):
                continue
            for j in jobs.get("jobs", []):
                if j["name"] not in served and j["state"] in ("served", "rejected", "failed"):
                    # served = published; the gateway swaps it in within a poll (it serves that version after)
                    served[j["name"]] = {"state": j["state"], "minutes": minutes(), "version": j.get("version"),
                                         "validation": j.get("validation"), "train_min": round((j.get("seconds") or 0)
                                                                                              / 60, 1)}
                    print(f"{minutes():6.2f} min  {j['name']}: {j['state']} {j.get('version')} "
                          f"{j.get('validation')}", flush=True)
            result["serving"] = jobs.get("serving")
            if jobs.get("jobs") and len(served) == len(jobs["jobs"]):
                break
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        result["total_min"] = minutes()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
