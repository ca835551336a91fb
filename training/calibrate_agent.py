"""Fit a trained agent's yes/no threshold and store it with the checkpoint, so the served agent answers yes/no
questions by its calibrated preference (log P(yes) - log P(no) after "Answer:" > threshold) instead of the text it
generates (issue #14: a 135M LM says "no" to almost everything; its preference still ranks the answers).

    python -m training.calibrate_agent --agent artifacts/v1/agent --questions 100 --threads 1

The threshold maximises accuracy on --questions training questions the trainer did not draw
(training.eval.agent.calibration_questions), each answered after the agent's own trajectory. The trainers
(training.train_exsearch, training.train_rose) call this after their last round; meta.json gets `yes_threshold`,
`calibration_accuracy` and `calibration_n`, which `models.exsearch.loop.load_trained` reads.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from indexing.data import load_multihop
from models.artifacts import read_meta, write_meta
from models.exsearch.loop import SearchAgent, load_trained
from models.registry import load_backend
from training.common import add_threads_arg, set_threads
from training.eval.agent import calibrate, calibration_questions, loop_score, trainer_draws


def calibrate_saved(agent_dir: Path, n: int = 100, data_dir: Path = Path("data/strategyqa"),
                    artifacts: Path = Path("artifacts/v1")) -> dict:
    """Fit the threshold of the agent saved in agent_dir on n training questions; rewrite its meta with it."""
    data = load_multihop(data_dir)
    model, tok, config, meta = load_trained(agent_dir)
    config.yes_threshold = None  # score the trajectory itself, not a previous threshold's answer
    agent = SearchAgent(model, tok, load_backend(artifacts, "retrieve", meta.get("retriever", "bm25")), data, config)
    train = data.split("train")
    fit = calibrate(loop_score(agent), calibration_questions(train, n, trainer_draws(train, agent_dir)),
                    f"calibrate {agent_dir.name}")
    meta = {k: v for k, v in read_meta(agent_dir).items() if k != "built_at"}
    write_meta(agent_dir, **meta, yes_threshold=fit["threshold"], calibration_accuracy=fit["calibration_accuracy"],
               calibration_n=fit["calibration_n"])
    print(f"{agent_dir}: yes_threshold {fit['threshold']:+.3f}, accuracy {fit['calibration_accuracy']:.3f} on "
          f"{fit['calibration_n']} training questions", flush=True)
    return fit


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", type=Path, default=Path("artifacts/v1/agent"))
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--data", type=Path, default=Path("data/strategyqa"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    calibrate_saved(a.agent, a.questions, a.data, a.artifacts)


if __name__ == "__main__":
    main()
