"""Checks of the deployment files: deploy/compose.yaml, deploy/Dockerfile, deploy/entrypoint.sh.

The structural checks are pure Python (PyYAML) and always run. When a Compose binary is installed
(`docker-compose`, Debian's package, or the `docker compose` plugin), `config -q` validates the file against
the Compose schema as well; that part is skipped only when neither binary works.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
MAKEFILE = ROOT / "Makefile"
GPU_SERVICES = ("vllm",)  # the only service that needs the GPU
# the commands of the Makefile's `artifacts` target (with data, lm and the meta.json targets it makes), in order
SERVE_STEPS = ("indexing.prepare", "indexing.lm prepare", "indexing.build")  # then the gateway opens


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_commands() -> list[list[str]]:
    cmds = []
    if shutil.which("docker-compose"):
        cmds.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            cmds.append(["docker", "compose"])
    return cmds


@pytest.mark.parametrize("profile_args", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_compose_config_validates(profile_args):
    cmds = _compose_commands()
    if not cmds:
        pytest.skip("neither docker-compose nor `docker compose` is installed")
    env = {**os.environ, "COMPOSE_PROJECT_NAME": "unisr-test"}
    for cmd in cmds:
        r = subprocess.run([*cmd, "-f", str(COMPOSE), *profile_args, "config", "-q"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, f"{' '.join(cmd)} config -q failed:\n{r.stdout}\n{r.stderr}"


def _depends_on(service: dict) -> dict:
    deps = service.get("depends_on", {})
    return {d: {} for d in deps} if isinstance(deps, list) else deps


def _container_ports(service: dict) -> set[int]:
    ports = set()
    for p in service.get("ports", []):
        target = p.get("target") if isinstance(p, dict) else str(p).split("/")[0].rsplit(":", 1)[-1]
        ports.add(int(target))
    return ports


def _nvidia_reservation(service: dict) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def _healthcheck_text(service: dict) -> str:
    test = service.get("healthcheck", {}).get("test", "")
    return " ".join(test) if isinstance(test, list) else str(test)


def test_core_services(compose):
    services = compose["services"]
    assert {"gateway", "redis"} <= services.keys()
    gw, redis = services["gateway"], services["redis"]
    assert "redis" in _depends_on(gw)
    assert _depends_on(gw)["redis"].get("condition") == "service_healthy"
    assert "healthcheck" in redis
    assert 8000 in _container_ports(gw)
    assert gw["environment"]["UNISR_REDIS_URL"] == "redis://redis:6379/0"
    assert "/healthz" in _healthcheck_text(gw)
    assert redis["image"].startswith("redis:7")
    cmd = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in cmd and "--appendfsync everysec" in cmd
    assert "appendfsync always" in COMPOSE.read_text()   # the production note next to it
    assert "profiles" not in gw and "profiles" not in redis


def test_gpu_profile(compose):
    services = compose["services"]
    for name in ("vllm", "gateway-gpu"):
        assert services[name].get("profiles") == ["gpu"], name
    assert _nvidia_reservation(services["vllm"]), "vllm has no nvidia GPU reservation"
    vllm, gpu_gw = services["vllm"], services["gateway-gpu"]
    # GEMS goes to vLLM's OpenAI-compatible server (models/gems/vllm.py VLLMServerItemGenerator)
    assert gpu_gw["environment"]["UNISR_GEMS_ENGINE"] == "vllm-server"
    assert gpu_gw["environment"]["UNISR_VLLM_URL"] == "http://vllm:8000"
    assert "UNISR_GEMS_ENGINE" not in services["gateway"].get("environment", {})  # the CPU gateway: transformers
    assert vllm["image"].startswith("vllm/vllm-openai:")
    command = " ".join(vllm["command"])
    for flag in ("vllm serve", "--enable-lora", "--lora-modules", "search=", "recommend=", "--max-logprobs 256",
                 "gems/vllm-base", "/app/artifacts/CURRENT"):
        assert flag in command, flag
    # the served form is what the trainer's gems job exports (service/jobs.py, training/export_vllm.py)
    from service.jobs import JOBS

    steps = JOBS["gems"].steps
    assert any(argv[1] == "training.export_vllm" and creates == "gems/vllm-base" for argv, creates in steps)
    assert "redis" in _depends_on(gpu_gw) and "gateway" in _depends_on(gpu_gw)
    assert set(_depends_on(gpu_gw)) <= set(services)
    assert "/healthz" in _healthcheck_text(gpu_gw) and "/health" in _healthcheck_text(vllm)
    # Only the GPU services carry a GPU reservation.
    assert not any(_nvidia_reservation(s) for n, s in services.items() if n not in GPU_SERVICES)


def test_host_ports_do_not_clash(compose):
    published = []
    for s in compose["services"].values():
        for p in s.get("ports", []):
            published.append(str(p.get("published")) if isinstance(p, dict) else str(p).rsplit(":", 1)[0])
    assert len(published) == len(set(published)), published


def test_build_dockerfiles_exist(compose):
    builds = [s["build"] for s in compose["services"].values() if "build" in s]
    assert builds, "no service builds an image"
    for b in builds:
        b = {"context": b} if isinstance(b, str) else b
        context = (COMPOSE.parent / b.get("context", ".")).resolve()
        assert context == ROOT, context
        dockerfile = context / b.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), dockerfile


def test_dockerfile():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"pip install[^\n]*\btorch==2\.13\.0\b[^\n]*download\.pytorch\.org/whl/cpu", text)
    assert "pip install ." in text
    # Every path the Dockerfile copies from the build context (the repository root) exists.
    for line in re.findall(r"^COPY\s+(.+)$", text, re.MULTILINE):
        for src in line.split()[:-1]:
            if src.startswith("--") or "*" in src:
                continue
            assert (ROOT / src).exists(), f"COPY source {src} missing"
    assert "deploy/entrypoint.sh" in text
    # the default image can run the entrypoint's `indexing.lm prepare` (gguf, accelerate: the lm extra)
    default_extras = re.search(r'^ARG EXTRAS="?([\w,]*)"?$', text, re.MULTILINE)
    assert default_extras and "lm" in default_extras.group(1).split(","), "the default image lacks the lm extra"


def test_every_unisr_variable_is_a_setting():
    """No deployment file sets (or reads) an UNISR_* variable that nothing reads: each one is a field of the
    gateway's Settings (the only reader of UNISR_*; the variable is the prefix + the upper-cased field name)."""
    from service.settings import Settings

    prefix = Settings.model_config["env_prefix"]
    fields = {name for name, f in Settings.model_fields.items() if f.validation_alias is None}  # aliases: no prefix
    used: dict[str, set[str]] = {}
    for path in (COMPOSE, DOCKERFILE, ENTRYPOINT):
        for key in re.findall(rf"\b{prefix}[A-Za-z0-9_]+", path.read_text()):
            used.setdefault(key, set()).add(path.name)
    assert {"UNISR_REDIS_URL", "UNISR_GEMS_ENGINE", "UNISR_ARTIFACTS_DIR"} <= used.keys()  # the scan sees them
    unknown = {key: sorted(files) for key, files in used.items() if key[len(prefix):].lower() not in fields}
    assert not unknown, f"UNISR_* variables no Settings field reads: {unknown}"


def test_entrypoint_executable():
    assert ENTRYPOINT.is_file()
    assert os.access(ENTRYPOINT, os.X_OK), "deploy/entrypoint.sh is not executable"
    text = ENTRYPOINT.read_text()
    for step in SERVE_STEPS:
        assert f"python -m {step}" in text, step
    assert "exec python -m service" in text and "exec python -m service.jobs" in text and "UNISR_HOST=0.0.0.0" in text
    r = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def _entrypoint_calls(tmp_path: Path, *args: str, code: int = 0, **env: str) -> list[str]:
    """Run deploy/entrypoint.sh with a stand-in `python` that records its arguments; the recorded calls."""
    bindir, log = tmp_path / "bin", tmp_path / f"calls-{len(list(tmp_path.glob('calls-*')))}.log"
    bindir.mkdir(exist_ok=True)
    (bindir / "python").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    (bindir / "python").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path), "UNISR_ARTIFACTS_DIR": str(tmp_path / "art"),
           "UNISR_DATA_DIR": str(tmp_path / "data"), **env}
    r = subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == code, r.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_entrypoint_serves_after_the_cheap_steps_of_the_makefile(tmp_path):
    """`serve` (the default role) builds only what `make serve` builds before the gateway opens, then serves;
    nothing is trained before the first answer."""
    makefile = MAKEFILE.read_text()
    for step in SERVE_STEPS:  # the same commands as `make serve` runs before it opens
        assert f"python -m {step}" in makefile, step
    calls = _entrypoint_calls(tmp_path)
    assert [c.split(" --")[0] for c in calls] == [f"-m {s}" for s in SERVE_STEPS] + ["-m service"], calls
    assert _entrypoint_calls(tmp_path, "serve") == calls
    assert not any("training." in c for c in calls)


def test_entrypoint_train_role_runs_the_job_runner(tmp_path):
    assert _entrypoint_calls(tmp_path, "train") == ["-m service.jobs"]
    [optimise] = _entrypoint_calls(tmp_path, "optimise", OPTIMISER_ARGS="--every 7")
    assert optimise == f"-m training.optimiser --artifacts {tmp_path}/art --data {tmp_path}/data/ml100k --every 7"
    assert _entrypoint_calls(tmp_path, "bogus", code=2) == []


def test_trainer_service_shares_the_artifacts_volume(compose):
    services = compose["services"]
    trainer, gateway = services["trainer"], services["gateway"]
    assert trainer["command"] == ["train"] and trainer["image"] == gateway["image"]
    volumes = lambda s: {str(v["source"]) if isinstance(v, dict) else v.split(":")[0]: str(
        v["target"]) if isinstance(v, dict) else v.split(":")[1] for v in s["volumes"]}  # noqa: E731
    assert volumes(trainer) == volumes(gateway)
    assert _depends_on(trainer)["gateway"].get("condition") == "service_healthy"
    assert not trainer.get("ports")


def test_entrypoint_skips_an_existing_lm(tmp_path):
    lm = tmp_path / "lm"
    calls = _entrypoint_calls(tmp_path, UNISR_LM=str(lm))
    assert calls[1] == f"-m indexing.lm prepare --dest {lm}", calls  # UNISR_LM missing: prepared there
    lm.mkdir()  # an existing LM directory (prepared, or another model) is never prepared over
    calls = _entrypoint_calls(tmp_path, UNISR_LM=str(lm))
    # indexing.prepare and indexing.build skip what exists themselves
    assert [c.split(" --")[0] for c in calls] == ["-m indexing.prepare", "-m indexing.build", "-m service"], calls


def test_makefile_passes_epochs_only_when_set(tmp_path):
    """The epochs live in the trainers' config dataclasses; make passes SASREC_EPOCHS / DOCID_EPOCHS when given."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    targets = ["recommend/sasrec/meta.json", "retrieve/diffugr/meta.json"]

    def dry(*assignments: str) -> str:
        (tmp_path / "retrieve" / "docids").mkdir(parents=True, exist_ok=True)
        (tmp_path / "retrieve" / "docids" / "meta.json").write_text("{}")
        # a clean make: under `make test DOCID_EPOCHS=15` (CI) the parent's overrides reach a child make through
        # MAKEFLAGS and the environment
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "SASREC_EPOCHS", "DOCID_EPOCHS")}
        r = subprocess.run(["make", "-n", "-s", f"ART={tmp_path}", *assignments, *(f"{tmp_path}/{t}" for t in targets)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout

    plain = dry()
    assert "training.train_sasrec" in plain and "training.train_diffugr" in plain and "--epochs" not in plain
    given = dry("SASREC_EPOCHS=7", "DOCID_EPOCHS=3")
    assert "--epochs 7" in given and "--epochs 3" in given


def test_makefile_targets_run_what_they_name():
    """`make test` runs pytest and `make loadtest` the load test, each from one recipe (a duplicated target makes
    make warn and run the last recipe: CI once ran the load test as its test step)."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    for target, expected in (("test", "-m pytest"), ("loadtest", "-m loadtest.run"), ("serve-ray", "serve run")):
        r = subprocess.run(["make", "-n", "-W", "pyproject.toml", "-o", "artifacts", "-o", "data", "-o", "lm",
                            target], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert "overriding recipe" not in r.stderr and "ignoring old recipe" not in r.stderr, r.stderr
        assert expected in r.stdout, (target, r.stdout)
