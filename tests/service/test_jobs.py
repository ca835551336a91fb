"""Serve first, improve while running: the background job runner (service/jobs.py), artifact versions
(models/artifacts.py) and the gateway swapping each published version in (service/reload.py).

The jobs here are real trainings of SASRec, made short by their arguments (a few epochs, validation every epoch) and
validated against a low floor (training.validate --floor), so a run takes seconds, not the 8 minutes of the default."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from models.artifacts import POINTER, publish_version, served_version
from service.jobs import JobRunner, describe, parse_progress, read_state
from tests.conftest import ROOT
from tests.service.test_faults import free_port, start_gateway

CHEAP = ("search/bm25", "search/dense", "retrieve/bm25", "retrieve/dense", "recommend/popularity", "recommend/cooc")
SHORT = ["--epochs", "{epochs}", "--eval-every", "1"]


@pytest.fixture
def base(artifacts, tmp_path) -> Path:
    """A fresh versions root holding v1 with only the cheap backends (links into the real artifacts)."""
    v1 = tmp_path / "artifacts" / "v1"
    for rel in CHEAP:
        (v1 / rel).parent.mkdir(parents=True, exist_ok=True)
        (v1 / rel).symlink_to(artifacts / rel)
    return v1


def runner(base: Path, epochs: int, floor: float = 0.02) -> JobRunner:
    return JobRunner(base, ROOT / "data", ["sasrec"], {"sasrec": [a.format(epochs=epochs) for a in SHORT]},
                     {"sasrec": floor}, progress_bars=False)


def test_tqdm_progress_is_parsed():
    line = "sasrec:  12%|#2        | 10/80 [00:40<04:40,  4.00s/it, loss=6.1, valid_hr10=0.13]"
    p = parse_progress(line)
    assert p == {"stage": "sasrec", "n": 10, "total": 80, "elapsed_s": 40.0, "eta_s": 280.0}
    assert parse_progress("resumed from epoch 4 (best valid HR@10 0.1)") is None
    assert parse_progress("docid-diffusion:   0%|          | 0/15 [00:00<?, ?it/s]")["eta_s"] is None
    assert describe({"name": "sasrec", "state": "training", "progress": p}) == "training (sasrec 10/80, ETA 4.7 min)"
    assert describe({"name": "sasrec", "state": "training", "progress": None}) == "training (starting)"
    assert describe({"name": "sasrec", "state": "served", "version": "v2"}) == "served (v2)"


def test_publish_makes_a_new_version_and_never_touches_the_old(base, tmp_path):
    stage = tmp_path / "stage"
    (stage / "recommend" / "sasrec").mkdir(parents=True)
    (stage / "recommend" / "sasrec" / "meta.json").write_text('{"backend": "sasrec"}')
    before = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
    assert served_version(base) == base  # no CURRENT yet: the directory itself
    v2 = publish_version(base, stage, ["recommend/sasrec"])
    assert v2.name == "v2" and (base.parent / POINTER).read_text().strip() == "v2" and served_version(base) == v2
    assert sorted(str(p.relative_to(base)) for p in base.rglob("*")) == before  # v1 unchanged
    assert (v2 / "recommend" / "sasrec" / "meta.json").exists() and (v2 / "search" / "bm25").is_symlink()
    with pytest.raises(FileNotFoundError, match="did not produce retrieve/diffugr"):
        publish_version(base, stage, ["retrieve/diffugr"])
    assert served_version(base) == v2 and not (base.parent / "v3").exists()


def test_a_rejected_checkpoint_is_never_served(base):
    state = runner(base, epochs=1, floor=0.99).run()["jobs"]["sasrec"]
    assert state["state"] == "rejected" and state["validation"]["accepted"] is False
    assert state["validation"]["value"] < 0.99 and "below its floor" in state["error"]
    assert served_version(base) == base and not (base.parent / POINTER).exists()


def test_a_killed_job_leaves_the_served_version_and_resumes(base, settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    s = settings.model_copy(update={"artifacts_dir": base, "warmup": False, "events_log": base.parent / "e.log"})
    query = "/recommend?user_id=1&k=10"
    with TestClient(create_app(s)) as c:
        answer = c.get(query).json()
    assert answer["backend"] == "cooc" and answer["degraded"]  # sasrec not trained yet: the best substitute
    first = runner(base, epochs=8).start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait until two epochs are saved (validation every epoch saves `last`)
        job = read_state(base)["jobs"].get("sasrec", {})
        if (job.get("progress") or {}).get("n", 0) >= 2 and job.get("pid"):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no progress: {read_state(base)}")
    os.killpg(job["pid"], signal.SIGKILL)  # a crash mid-training, not a polite stop
    first._thread.join(60)
    killed = read_state(base)["jobs"]["sasrec"]
    assert killed["state"] == "failed" and "exit status -9" in killed["error"]
    assert served_version(base) == base and not (base.parent / POINTER).exists()
    with TestClient(create_app(s)) as c:
        assert c.get(query).json()["results"] == answer["results"]  # the served answers did not change
    done = runner(base, epochs=8).run()["jobs"]["sasrec"]  # the next start
    log = Path(done["log"]).read_text()
    resumed = int(log.split("resumed from epoch ")[1].split()[0])
    assert resumed >= 2 and done["state"] == "served" and done["version"] == "v2", (done, log[-2000:])
    assert served_version(base).name == "v2" and (base.parent / "v2" / "recommend" / "sasrec" / "meta.json").exists()


def test_a_job_finishing_under_load_is_swapped_in_without_a_failed_request(base, tmp_path):
    """The gateway serves the cheap backends at once; the runner it started trains SASRec, validates it, publishes
    v2; the gateway swaps it in while four clients keep asking: no request fails, and the answers go from degraded
    (co-occurrence, "not served yet" with the job's progress) to SASRec."""
    port = free_port(8471)
    args = [a.format(epochs=3) for a in SHORT]
    gateway = start_gateway(port, base, tmp_path / "events.log", tmp_path / "gateway.log", UNISR_RUN_JOBS="true",
                            UNISR_JOBS='["sasrec"]', UNISR_JOB_ARGS=json.dumps({"sasrec": args}),
                            UNISR_JOB_FLOORS='{"sasrec": 0.02}', UNISR_VERSION_POLL_S="0.3", UNISR_AGENT="false",
                            UNISR_ADMIN_TOKEN="t")
    url = f"http://127.0.0.1:{port}"
    seen: list[tuple[float, str, bool, str | None]] = []
    failures: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = client.get(f"/recommend?user_id={1 + (worker * 97 + n) % 900}&k=10")
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                body = r.json()
                seen.append((time.monotonic(), body["backend"], body["degraded"], body.get("degraded_reason")))

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(b == "sasrec" for _, b, _, _ in seen[-50:]):
            time.sleep(0.5)
        time.sleep(2)  # keep the load on after the swap
        jobs = httpx.get(f"{url}/admin/jobs", headers={"Authorization": "Bearer t"}).json()
        refused = httpx.get(f"{url}/admin/jobs")
        stop.set()
        for t in threads:
            t.join(30)
        rolled = httpx.post(f"{url}/admin/rollback", headers={"Authorization": "Bearer t"}, timeout=60)
        after = httpx.get(f"{url}/recommend?user_id=1&k=10").json()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        gateway.send_signal(signal.SIGINT)
        gateway.wait(60)
    assert not failures, failures[:5]
    backends = [b for _, b, _, _ in seen]
    assert backends[0] == "cooc" and backends[-1] == "sasrec", (backends[:3], backends[-3:], jobs)
    switch = backends.index("sasrec")
    assert set(backends[switch:]) == {"sasrec"}  # once swapped in, every answer comes from it
    training = [r for _, b, d, r in seen[:switch] if d]
    assert training and all(r.startswith("sasrec is not served yet: ") for r in training), set(training)
    assert any(r.startswith("sasrec is not served yet: training (sasrec ") and "/3" in r for r in training)
    assert any("validating" in r or "published as v2" in r for r in training), set(training)
    assert jobs["serving"] == "v2" and jobs["jobs"][0]["state"] == "served"
    assert jobs["jobs"][0]["validation"]["accepted"] and refused.status_code == 401
    # the rollback goes back to v1 and says so in CURRENT (a restart serves v1 too)
    assert rolled.status_code == 200 and rolled.json()["version"] == "v1", rolled.text
    assert (base.parent / POINTER).read_text().strip() == "v1" and served_version(base) == base
    assert after["backend"] == "cooc" and after["degraded_reason"] == "sasrec not loaded; answered by cooc"
    print(f"{len(seen)} requests, 0 failed; switched after {switch}")
