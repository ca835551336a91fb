"""Background training jobs: serve first, improve while running.

The gateway opens as soon as the cheap backends exist (BM25, dense, popularity, co-occurrence); the learned ones are
trained here, one at a time and cheapest first (SASRec, DiffuGR, the EXSEARCH agent, GEMS), each in its own
process with one torch thread (OMP_WAIT_POLICY=PASSIVE) so serving keeps a core. A job:

1. trains into its stage, <root>/jobs/<name>/stage (root = the parent of the artifacts directory, e.g. artifacts/);
   the trainers save their last epoch there and resume from it, so a killed or interrupted job continues from its
   last saved epoch on the next start;
2. validates the staged checkpoint (`python -m training.validate`: it loads, its held-out test figure is not below
   its floor in training/eval/expected.yaml);
3. publishes it: a new version <root>/v<N> (the served version plus the job's outputs, hard links for the rest) and
   <root>/CURRENT names it (models.artifacts.publish_version). The gateway's version watcher (service/reload.py)
   loads it beside the serving engine and swaps it in; requests in flight finish on the old one.

A failed, rejected or interrupted job never touches the served version. Progress (stage, step of total, ETA, last
validation) goes to <root>/jobs/state.json, read by GET /admin/jobs, /readyz and the degraded reasons of requests for
a backend still training; each job's output goes to <root>/jobs/<name>.log and a progress bar per job to stderr.

    python -m service.jobs       # the runner alone: docker compose's trainer service, or beside a running gateway
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from tqdm import tqdm

from models.artifacts import link_tree, publish_version, remove_path, served_version

log = structlog.get_logger("unisr.jobs")


@dataclass(frozen=True)
class Job:
    """One learned backend: the paths it adds to a version and the commands that build them, in order. In a
    command {python}, {stage}, {data} and {threads} are substituted; a step whose `creates` (a path under the stage
    holding meta.json) exists is skipped on resume."""
    name: str
    outputs: tuple[str, ...]
    steps: tuple[tuple[tuple[str, ...], str | None], ...]  # (argv after {python}, creates)


# cheapest first (measured on the 2-core machine: SASRec ~8 min, DiffuGR ~15 min, the agent ~30 min, GEMS ~1 h and
# its student ~30 min)
JOBS: dict[str, Job] = {
    "sasrec": Job("sasrec", ("recommend/sasrec",), (
        (("-m", "training.train_sasrec", "--data", "{data}/ml100k", "--out", "{stage}/recommend/sasrec",
          "--threads", "{threads}"), None),)),
    "diffugr": Job("diffugr", ("retrieve/docids", "retrieve/diffugr"), (
        (("-m", "indexing.docids", "--artifacts", "{stage}"), "retrieve/docids"),
        (("-m", "training.train_diffugr", "--mode", "diffusion", "--data", "{data}/strategyqa-facts",
          "--docids", "{stage}/retrieve/docids", "--out", "{stage}/retrieve/diffugr", "--threads", "{threads}"),
         None))),
    "agent": Job("agent", ("agent",), (
        (("-m", "training.train_exsearch", "--data", "{data}/strategyqa", "--artifacts", "{stage}",
          "--out", "{stage}/agent", "--preset", "warm", "--threads", "{threads}"), "agent"),
        # its Low-Rank Clone student, served (UNISR_AGENT_STUDENT=true) when a budget is under the teacher's step
        (("-m", "training.train_lrc", "--agent", "{stage}/agent", "--data", "{data}", "--threads", "{threads}"),
         "agent/student"))),
    "gems": Job("gems", ("gems", "search/gems", "recommend/gems"), (
        (("-m", "training.train_gems", "--variants", "gems", "--data", "{data}", "--artifacts", "{stage}",
          "--out", "{stage}/gems", "--results", "{stage}/gems-results", "--threads", "{threads}"), "gems"),
        # the form a vLLM server loads (compose's gpu profile serves it): base + item tokens beside the adapters
        (("-m", "training.export_vllm", "--checkpoint", "{stage}/gems", "--threads", "{threads}"), "gems/vllm-base"),
        # its Low-Rank Clone student, served when a request's budget is under the teacher's cost
        (("-m", "training.train_lrc", "--gems", "{stage}/gems", "--data", "{data}", "--threads", "{threads}"),
         "gems/student"))),
}

# tqdm's bar: "desc:  12%|#2   | 10/80 [00:40<04:40, 4.00s/it, loss=...]"
_BAR = re.compile(r"(?:(?P<desc>[^\r\n|]*?):\s*)?\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                  r"\[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+)")


def _seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    s = 0.0
    for part in clock.split(":"):
        s = s * 60 + float(part)
    return s


def parse_progress(segment: str) -> dict | None:
    """The progress in one tqdm refresh (None for any other output line)."""
    m = _BAR.search(segment)
    if not m:
        return None
    return {"stage": (m["desc"] or "").strip() or None, "n": int(m["n"]), "total": int(m["total"]),
            "elapsed_s": _seconds(m["elapsed"]), "eta_s": _seconds(m["remaining"])}


def jobs_root(artifacts_dir: Path) -> Path:
    return Path(artifacts_dir).parent / "jobs"


# state.json -> ((inode, mtime_ns), parsed): parsed again only when the runner replaced it (a new inode each write)
_STATE_CACHE: dict[Path, tuple[tuple[int, int], dict]] = {}


def read_state(artifacts_dir: Path) -> dict:
    """The runner's last written state ({"jobs": {name: {...}}}); empty when no runner ever ran here. A degraded
    request's reason reads it, so it is parsed once per write (the runner replaces the file), not per request."""
    path = jobs_root(artifacts_dir) / "state.json"
    try:
        st = path.stat()
        stamp = (st.st_ino, st.st_mtime_ns)
        cached = _STATE_CACHE.get(path)
        if cached is None or cached[0] != stamp:
            _STATE_CACHE[path] = cached = (stamp, json.loads(path.read_text()))
        return cached[1]
    except (FileNotFoundError, json.JSONDecodeError):
        return {"jobs": {}}


def describe(job: dict) -> str:
    """One line for a person: "training (sasrec 12/80, ETA 4.7 min)", "served (v2)", "rejected (...)"."""
    p = job.get("progress") or {}
    if job["state"] == "served":
        return f"served ({job.get('version')})"
    if job["state"] in ("failed", "rejected", "interrupted"):
        return f"{job['state']} ({job.get('error')})"
    if job["state"] != "training":
        return job["state"]
    if not p.get("total"):
        return "training (starting)"
    eta = f", ETA {p['eta_s'] / 60:.1f} min" if p.get("eta_s") is not None else ""
    return f"training ({p['stage'] or job['name']} {p['n']}/{p['total']}{eta})"


@dataclass
class JobRunner:
    """Runs `names` (in JOBS order) for the artifacts directory `base` (its parent is the versions root)."""
    base: Path
    data: Path = Path("data")
    names: list[str] = field(default_factory=lambda: list(JOBS))
    extra_args: dict[str, list[str]] = field(default_factory=dict)  # appended to a job's training step (--epochs)
    floors: dict[str, float] = field(default_factory=dict)  # acceptance floor overrides (training.validate --floor)
    threads: int = 1
    python: str = sys.executable
    progress_bars: bool = True

    def __post_init__(self):
        unknown = [n for n in self.names if n not in JOBS]
        if unknown:
            raise ValueError(f"unknown job(s) {unknown}; known: {', '.join(JOBS)}")
        self.base, self.data = Path(self.base), Path(self.data)
        self.root = jobs_root(self.base)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = {"jobs": {n: {"name": n, "state": "queued", "progress": None} for n in self.ordered()}}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def ordered(self) -> list[str]:
        return [n for n in JOBS if n in self.names]

    # ------------------------------------------------------------ state
    def _update(self, name: str, **changes) -> None:
        with self._lock:
            self.state["jobs"][name].update(changes)
            self.state["updated_at"] = time.time()
            tmp = self.root / ".state.json.tmp"
            tmp.write_text(json.dumps(self.state, indent=2) + "\n")
            os.replace(tmp, self.root / "state.json")

    # ------------------------------------------------------------ lifecycle
    def start(self) -> JobRunner:
        self._thread = threading.Thread(target=self.run, name="unisr-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after interrupting the running job (its stage stays: the next start resumes it)."""
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> dict:
        """Every job in order, one at a time; returns the final state."""
        for name in self.ordered():
            if self._stop.is_set():
                break
            try:
                self.run_job(JOBS[name])
            except Exception as e:  # noqa: BLE001 - one job's failure never stops the others or the gateway
                log.error("job_failed", job=name, error=repr(e))
                self._update(name, state="failed", error=repr(e), finished_at=time.time())
        return self.state

    def served(self, job: Job) -> Path | None:
        version = served_version(self.base)
        return version if all((version / o / "meta.json").exists() for o in job.outputs) else None

    def run_job(self, job: Job) -> None:
        version = self.served(job)
        if version is not None:
            self._update(job.name, state="served", version=version.name, progress=None)
            return
        stage = self.root / job.name / "stage"
        if not stage.exists():  # the served version's files as inputs (hard links), without the job's outputs
            tmp = stage.with_name("stage.partial")
            shutil.rmtree(tmp, ignore_errors=True)
            link_tree(served_version(self.base), tmp)
            for rel in job.outputs:
                remove_path(tmp / rel)
            os.replace(tmp, stage)
        logfile = self.root / f"{job.name}.log"
        t0 = time.time()
        self._update(job.name, state="training", started_at=t0, log=str(logfile), error=None)
        log.info("job_started", job=job.name, stage=str(stage), log=str(logfile))
        subs = {"python": self.python, "stage": str(stage), "data": str(self.data), "threads": str(self.threads)}
        for argv, creates in job.steps:
            if creates and (stage / creates / "meta.json").exists():
                continue
            args = [a.format(**subs) for a in argv]
            if argv[1].startswith("training.train_"):  # the training step takes the job's extra arguments
                args += self.extra_args.get(job.name, [])
            code = self._execute(job.name, [self.python, *args], logfile)
            if code != 0:
                why = "interrupted" if self._stop.is_set() else f"exit status {code}"
                self._update(job.name, state="failed" if not self._stop.is_set() else "interrupted",
                             error=f"{' '.join(args[:2])}: {why} (see {logfile}); the served version is unchanged",
                             finished_at=time.time())
                log.warning("job_stopped", job=job.name, reason=why)
                return
        self._update(job.name, state="validating", progress=None)
        verdict = self.validate(job, stage, logfile)
        if not verdict.get("accepted"):
            self._update(job.name, state="rejected", validation=verdict, finished_at=time.time(), progress=None,
                         error=f"held-out {verdict.get('metric')} {verdict.get('value')} is below its floor "
                               f"{verdict.get('floor')}; kept out of serving")
            log.warning("job_rejected", job=job.name, validation=verdict)
            return
        new = publish_version(self.base, stage, list(job.outputs))
        shutil.rmtree(stage.parent, ignore_errors=True)
        self._update(job.name, state="served", validation=verdict, version=new.name, finished_at=time.time(),
                     progress=None, seconds=round(time.time() - t0, 1))
        log.info("job_published", job=job.name, version=new.name, validation=verdict)

    def validate(self, job: Job, stage: Path, logfile: Path) -> dict:
        args = [self.python, "-m", "training.validate", "--backend", job.name, "--artifacts", str(stage),
                "--data", str(self.data), "--threads", str(self.threads)]
        if job.name in self.floors:
            args += ["--floor", str(self.floors[job.name])]
        lines: list[str] = []
        code = self._execute(job.name, args, logfile, lines)
        for line in reversed(lines):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    break
        return {"accepted": False, "error": f"validation exit status {code} (see {logfile})"}

    def _execute(self, name: str, argv: list[str], logfile: Path, lines: list[str] | None = None) -> int:
        """Run one command in its own process group; its output goes to the job's log, tqdm refreshes to the job's
        progress (state.json) and progress bar. Returns the exit status."""
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "1"}
        bar = tqdm(desc=f"job {name}", total=0, position=list(JOBS).index(name), leave=True,
                   disable=not self.progress_bars, dynamic_ncols=True)
        last_write = 0.0
        with open(logfile, "ab") as out:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
            self._proc = proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 start_new_session=True, env=env)
            self._update(name, pid=proc.pid)
            buf = b""
            while chunk := proc.stdout.read1(4096):
                out.write(chunk)
                buf += chunk
                *segments, buf = re.split(rb"[\r\n]", buf)
                for seg in segments:
                    text = seg.decode(errors="replace")
                    if lines is not None and text.strip():
                        lines.append(text.strip())
                    p = parse_progress(text)
                    if p is None:
                        continue
                    bar.total, bar.n = p["total"], p["n"]
                    bar.set_description(f"job {name}: {p['stage'] or name}", refresh=False)
                    bar.refresh()
                    if time.time() - last_write > 1.0 or p["n"] == p["total"]:
                        self._update(name, progress=p)
                        last_write = time.time()
            code = proc.wait()
        bar.close()
        self._proc = None
        self._update(name, pid=None)
        return code


def main(argv=None) -> None:
    """Run the jobs the settings name (UNISR_JOBS, default all) for UNISR_ARTIFACTS_DIR, then exit."""
    import argparse

    from service.settings import Settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.parse_args(argv)
    s = Settings()
    runner = JobRunner(s.artifacts_dir, s.data_dir, s.jobs or list(JOBS), s.job_args, s.job_floors)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    state = runner.run()
    print(json.dumps({n: j["state"] for n, j in state["jobs"].items()}))


if __name__ == "__main__":
    main()
