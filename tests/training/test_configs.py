"""The trainers' hyperparameters live in their config dataclasses: the CLIs are built from them (same defaults,
the values the published figures were trained with), every entry point sets an explicit torch thread count, and
importing `training` makes OpenMP threads wait passively."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

STATE = {"best_hr10": 0.0, "best_recall10": 0.0, "best_epoch": 0}  # what main() prints of a trainer's result


def _captured(monkeypatch, module, name: str, argv: list[str]) -> dict:
    """Run module.main(argv) with its work function `name` and torch's thread setting replaced by recorders."""
    seen: dict = {}
    monkeypatch.setattr(module, name, lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs) or STATE)
    monkeypatch.setattr(module, "set_threads", lambda n: seen.update(threads=n))
    module.main(argv)
    return seen


def test_training_sets_passive_threads():
    import training  # noqa: F401

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_sasrec_cli_defaults_are_the_dataclass(monkeypatch):
    from training import train_sasrec as m

    assert m.TrainConfig().epochs == 80 and m.TrainConfig().d_model == 64 and m.TrainConfig().n_layers == 2
    with pytest.raises(TypeError):  # an override that is not a field
        m.train(Path("unused"), Path("unused"), no_such_option=1)
    seen = _captured(monkeypatch, m, "train", [])
    assert seen["args"][2] == m.TrainConfig() and seen["threads"] >= 1
    seen = _captured(monkeypatch, m, "train", ["--epochs", "3", "--n-layers", "1", "--threads", "1"])
    assert seen["args"][2] == m.TrainConfig(epochs=3, n_layers=1) and seen["threads"] == 1


def test_diffugr_cli_defaults_are_the_dataclass(monkeypatch):
    from training import train_diffugr as m

    assert m.TrainConfig().epochs == 30 and m.TrainConfig().d_model == 256 and m.TrainConfig().n_layers == 4
    seen = _captured(monkeypatch, m, "train", ["--mode", "ar"])
    assert seen["args"][3:] == ("ar", m.TrainConfig()) and seen["threads"] >= 1


def test_gems_cli_defaults_are_the_dataclasses(monkeypatch):
    from models.gems.subspaces import GEMSConfig
    from training import train_gems as m

    seen = _captured(monkeypatch, m, "run", ["--rank", "4"])
    cfg, adapters = seen["args"][4], seen["args"][7]
    assert cfg == m.TrainConfig() and cfg.epochs == 8
    assert adapters == {"top_layers": GEMSConfig.top_layers, "rank": 4, "null_energy": GEMSConfig.null_energy,
                        "refresh": GEMSConfig.refresh}
    assert (GEMSConfig.top_layers, GEMSConfig.rank, GEMSConfig.null_energy) == (4, 8, 0.9)
    assert seen["threads"] >= 1


def test_exsearch_and_eval_clis_set_threads(monkeypatch):
    from training import train_exsearch
    from training.eval import agent, ranking

    seen = _captured(monkeypatch, train_exsearch, "train", ["--threads", "1"])
    assert seen["args"][1] == train_exsearch.EMConfig() and seen["threads"] == 1
    # the served agent's preset replaces the defaults; an option given still wins
    seen = _captured(monkeypatch, train_exsearch, "train", ["--preset", "warm", "--k", "4"])
    assert seen["args"][1] == train_exsearch.EMConfig(**{**train_exsearch.PRESETS["warm"], "k": 4})
    assert seen["args"][1].warm_start == 1200 and seen["args"][1].rounds == 0
    from training import train_rose  # the same command line (train_exsearch.agent_cli), its own config and --out

    monkeypatch.setattr(train_rose, "train", lambda *args: seen.update(rose=args))
    train_rose.main(["--threads", "1", "--rollouts", "5"])
    assert seen["rose"][1] == train_rose.RoseConfig(rollouts=5) and str(seen["rose"][0]).endswith("agent-rose")
    monkeypatch.setattr(agent, "load_multihop", lambda d: (_ for _ in ()).throw(SystemExit("stop")))
    monkeypatch.setattr(agent, "set_threads", lambda n: monkeypatch.setenv("SEEN_THREADS", str(n)))
    with pytest.raises(SystemExit):
        agent.main(["--threads", "1"])
    assert os.environ["SEEN_THREADS"] == "1"
    monkeypatch.setattr(ranking, "set_threads", lambda n: monkeypatch.setenv("SEEN_THREADS", str(n)))
    monkeypatch.setattr(ranking, "run", lambda *a, **k: (_ for _ in ()).throw(SystemExit("stop")))
    with pytest.raises(SystemExit):
        ranking.main(["--task", "search", "--backend", "bm25", "--threads", "2"])
    assert os.environ["SEEN_THREADS"] == "2"
