"""The self-evolving loop's optimiser (training/optimiser.py) on a real Redis stream, and the flashback term of the
continual update (training/evolve.py). Events are real MovieLens-100k interactions from after the time split's cut,
in the gateway's stream format."""
from __future__ import annotations

import json
import uuid

import pytest
import redis
import torch

from models.artifacts import POINTER, read_meta, served_version
from models.sasrec.model import SASRec, SASRecConfig
from tests.conftest import ROOT
from training.evolve import EvolveConfig, flashback_divergence, time_split, update
from training.optimiser import GROUP, Optimiser

CHEAP = ("search/bm25", "search/dense", "retrieve/bm25", "retrieve/dense", "recommend/popularity", "recommend/cooc",
         "recommend/sasrec")


@pytest.fixture
def r():
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (make test starts it: deploy/ensure-redis.sh)")
    return client


@pytest.fixture
def stream(r):
    name = f"unisr:test-events:{uuid.uuid4().hex[:8]}"
    yield name
    r.delete(name)


@pytest.fixture
def base(artifacts, tmp_path):
    v1 = tmp_path / "artifacts" / "v1"
    for rel in CHEAP:
        (v1 / rel).parent.mkdir(parents=True, exist_ok=True)
        (v1 / rel).symlink_to(artifacts / rel)
    return v1


def future_events(n: int) -> list[dict]:
    split = time_split(ROOT / "data" / "ml100k", EvolveConfig())
    items = split["items"]
    events = []
    for u, (_before, inside) in split["windows"][0].items():
        for i in inside:
            events.append({"user_id": u, "item_id": items[i - 1], "event_type": "rate", "key": f"{u}-{i}"})
    return events[:n]


def add(r, stream, events) -> list[str]:
    return [r.xadd(stream, {"event": json.dumps(e)}).decode() for e in events]


def optimiser(r, stream, base, **kw) -> Optimiser:
    cfg = EvolveConfig(update_epochs=1, replay_users=32)
    return Optimiser(r, stream, base, ROOT / "data" / "ml100k", kw.pop("every", 40), consumer="test",
                     old_users=100, cfg=cfg, **kw)


def test_every_event_is_learned_exactly_once_across_crashes(r, stream, base):
    ids = add(r, stream, future_events(120))
    opt = optimiser(r, stream, base, tolerance=1.0, min_gain=-1.0)
    # crash 1: a round read but never finished (nothing published, nothing acknowledged)
    assert len(opt.read()) == 40
    # crash 2: the next start re-reads those pending entries first, publishes, and dies before acknowledging
    opt = optimiser(r, stream, base, tolerance=1.0, min_gain=-1.0)
    first = opt.read()
    assert [i for i, _ in first] == ids[:40]
    assert opt.learn(first)["served"] == "v2"
    # the next start: the 40 published entries are acknowledged, not learned again; then the rest, once each
    opt = optimiser(r, stream, base, tolerance=1.0, min_gain=-1.0)
    results = opt.run(idle_exit_s=1.0)
    assert results[0] == {"events": 40, "already_learned": 40}
    assert [x["models"]["sasrec"]["learned"] for x in results[1:]] == [40, 40]
    assert r.xpending(stream, GROUP)["pending"] == 0
    metas = [read_meta(base.parent / f"v{n}" / "recommend" / "sasrec") for n in (2, 3, 4)]
    assert [(m["events_from"], m["events_through"]) for m in metas] == [(ids[0], ids[39]), (ids[40], ids[79]),
                                                                       (ids[80], ids[119])]
    assert metas[-1]["learned_events"] == 120 and served_version(base).name == "v4"


def test_a_rejected_candidate_is_never_served(r, stream, base):
    add(r, stream, future_events(40))
    opt = optimiser(r, stream, base, min_gain=1.0)  # an HR@10 gain of 1.0 is impossible
    [result] = opt.run(rounds=1)
    assert result["accepted"] == [] and result["models"]["sasrec"]["accepted"] is False and result["served"] == "v1"
    assert not (base.parent / POINTER).exists() and served_version(base) == base
    logged = [json.loads(line) for line in (base.parent / "jobs" / "optimiser.jsonl").read_text().splitlines()]
    assert logged[-1]["accepted"] == [] and "newest_hr10" in logged[-1]["models"]["sasrec"]  # kept out, with figures
    assert r.xpending(stream, GROUP)["pending"] == 0  # the events were used once; not learned again


def test_flashback_divergence_is_zero_unchanged_and_grows_with_the_update():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=50, max_len=10)).eval()
    flash = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
    assert flashback_divergence(model, model, flash).item() == pytest.approx(0.0, abs=1e-6)
    window = {"u": ([1, 2, 3], [20, 21, 22, 23, 24, 25])}
    small = update(model, "naive", window, flash, EvolveConfig(update_epochs=1, lr=1e-3))
    large = update(model, "naive", window, flash, EvolveConfig(update_epochs=20, lr=1e-3))
    d1, d2 = (flashback_divergence(m.eval(), model, flash).item() for m in (small, large))
    assert 0 < d1 < d2


@pytest.fixture
def live_db(r):
    """Redis database 13, emptied: the replay's idempotency keys are deterministic (user, item, timestamp), so a
    database shared with an earlier run would answer every event as a duplicate."""
    client = redis.Redis.from_url(LIVE_URL)
    client.flushdb()
    yield client
    client.flushdb()


LIVE_URL = "redis://127.0.0.1:6379/13"


def test_the_live_loop_swaps_a_learned_recommender_in_without_a_failed_request(live_db, stream, base, tmp_path):
    """Gateway (events in a Redis stream) + the replay of the future + the optimiser: the learned SASRec is
    published and swapped in under load with no failed request, and a replayed user's answer changes once their
    interactions were learned (their events were already in the history before: the model made the change)."""
    import threading

    import httpx

    from loadtest.replay import replay
    from tests.service.test_faults import free_port, start_gateway

    port = free_port(8472)
    gateway = start_gateway(port, base, tmp_path / "events.log", tmp_path / "gateway.log",
                            UNISR_REDIS_URL=LIVE_URL, UNISR_EVENTS_STREAM=stream,
                            UNISR_VERSION_POLL_S="0.3", UNISR_AGENT="false")
    url = f"http://127.0.0.1:{port}"
    failures, stop, worker = [], threading.Event(), None
    try:
        sent = replay(url, ROOT / "data" / "ml100k", rate=1000, limit=80)
        assert sent["new"] == 80 and sent["failed"] == 0
        user = json.loads(live_db.xrange(stream, count=1)[0][1][b"event"])["user_id"]
        query = f"/recommend?user_id={user}&k=10&backend=sasrec"
        before = httpx.get(url + query).json()

        def load():
            with httpx.Client(base_url=url, timeout=10) as c:
                while not stop.is_set():
                    resp = c.get(query)
                    if resp.status_code != 200:
                        failures.append(resp.status_code)

        worker = threading.Thread(target=load)
        worker.start()
        results = optimiser(live_db, stream, base, every=40, tolerance=1.0, min_gain=-1.0).run(rounds=2)
        assert [x["served"] for x in results] == ["v2", "v3"]
        for _ in range(100):
            if httpx.get(url + "/readyz").json()["detail"]["artifacts"].endswith("v3"):
                break
            threading.Event().wait(0.2)
        after = httpx.get(url + query).json()
    finally:
        stop.set()
        if worker is not None:
            worker.join(30)
        gateway.terminate()
        gateway.wait(60)
    assert not failures, failures[:5]
    assert before["backend"] == after["backend"] == "sasrec"
    # the learned model scores the user's candidates differently (the ranking may or may not move)
    assert [(x["id"], x["score"]) for x in after["results"]] != [(x["id"], x["score"]) for x in before["results"]]


@pytest.fixture(scope="module")
def tiny_gems(artifacts, tmp_path_factory):
    """A tiny run of the real GEMS pipeline (the paper's form, null space on) into a served layout of its own."""
    from training.train_gems import TrainConfig, run

    root = tmp_path_factory.mktemp("gems-art")
    for task in ("search", "recommend"):
        (root / task).mkdir()
        for d in (artifacts / task).iterdir():
            (root / task / d.name).symlink_to(d)
    cfg = TrainConfig(search_examples=64, recommend_users=16, epochs=1, batch_size=16, eval_users=8, beam=10,
                      general_texts=32, history=20)
    run(root / "gems", root, ROOT / "data", ["gems"], cfg, None, root / "results", {"top_layers": 2},
        baselines=False)
    return root


@pytest.fixture
def gems_base(tiny_gems, base):
    """The cheap backends (`base`) plus the tiny GEMS checkpoint, as version v1."""
    import shutil

    shutil.copytree(tiny_gems / "gems", base / "gems")
    for task in ("search", "recommend"):
        shutil.copytree(tiny_gems / task / "gems", base / task / "gems")
    return base


def test_gems_learns_a_round_in_its_recommendation_subspace_once_and_is_served(r, stream, gems_base, settings):
    """--models sasrec,gems: both candidates published in one version; GEMS's recommendation subspace moved and its
    shared and search subspaces did not; entries a published round learned are not learned again after a crash
    before the acknowledgement; the gateway on the new version answers /recommend?backend=gems with the new model."""
    from safetensors.torch import load_file

    ids = add(r, stream, future_events(40))
    small = small_gems_config()
    kw = dict(tolerance=1.0, min_gain=-1.0, models=("sasrec", "gems"), gems_cfg=small)
    opt = optimiser(r, stream, gems_base, **kw)
    entries = opt.read()
    user = entries[0][1]["user_id"]
    before = recommend_with_gems(settings, gems_base, user)  # v1: CURRENT does not exist yet
    result = opt.learn(entries)  # published, then "crashes" before acknowledging
    assert result["accepted"] == ["sasrec", "gems"] and result["served"] == "v2", result
    figures = result["models"]["gems"]
    assert figures["learned"] == 40 and figures["held_out"] > 0 and {"new", "flashback", "latent"} <= set(
        figures["losses"])
    v1, v2 = gems_base, gems_base.parent / "v2"
    assert opt.gems.directory == (v2 / "gems").resolve()  # the next round continues from the accepted model
    assert read_meta(v2 / "gems")["events_through"] == ids[-1] and read_meta(v2 / "gems")["learned_events"] == 40
    old, new = (load_file(str(v / "gems" / "adapters.safetensors")) for v in (v1, v2))
    moved = {k for k in old if not torch.equal(old[k], new[k])}
    assert moved and all(k.endswith(".D.recommend") for k in moved), sorted(moved)[:5]
    assert (v2 / "gems" / "peft" / "recommend" / "adapter_config.json").exists()
    again = optimiser(r, stream, gems_base, **kw).round(entries)  # the restart: acknowledged, not learned again
    assert again == {"events": 40, "already_learned": 40}
    assert recommend_with_gems(settings, gems_base, user) != before  # the gateway follows CURRENT to v2


def recommend_with_gems(settings, artifacts, user: str) -> list[tuple[str, float]]:
    """/recommend?backend=gems for the user from a gateway on `artifacts` (it serves the version CURRENT names)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings.model_copy(update={"artifacts_dir": artifacts}))) as client:
        body = client.get("/recommend", params={"user_id": user, "backend": "gems", "k": 10,
                                                "latency_budget_ms": 60_000}).json()
    assert body["backend"] == "gems" and not body["degraded"] and len(body["results"]) == 10, body
    return [(x["id"], x["score"]) for x in body["results"]]


def test_a_rejected_gems_candidate_is_never_served(r, stream, gems_base):
    add(r, stream, future_events(40))
    small = small_gems_config()
    opt = optimiser(r, stream, gems_base, min_gain=1.0, models=("gems",), gems_cfg=small)
    [result] = opt.run(rounds=1)
    assert result["accepted"] == [] and result["served"] == "v1" and served_version(gems_base) == gems_base
    logged = json.loads((gems_base.parent / "jobs" / "optimiser.jsonl").read_text().splitlines()[-1])
    assert logged["models"]["gems"]["accepted"] is False and "search_hr10" in logged["models"]["gems"]
    assert r.xpending(stream, GROUP)["pending"] == 0


def small_gems_config():
    from training.evolve_gems import EvolveGEMSConfig

    return EvolveGEMSConfig(update_epochs=1, flashbacks=16, flashback_batch=4, replay_windows=16)


def test_a_model_not_trained_yet_joins_later_and_unknown_models_are_refused(r, stream, base):
    """compose runs `--models sasrec,gems` from the start: until GEMS is published, rounds learn SASRec only."""
    assert optimiser(r, stream, base, models=("sasrec", "gems")).served() == ["sasrec"]
    with pytest.raises(ValueError, match="models must be some of"):
        optimiser(r, stream, base, models=("ranker",))
