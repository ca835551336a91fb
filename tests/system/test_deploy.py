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
GPU_SERVICES = ("vllm", "gateway-gpu")


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
    for name in GPU_SERVICES:
        assert name in services, name
        assert services[name].get("profiles") == ["gpu"], name
        assert _nvidia_reservation(services[name]), f"{name} has no nvidia GPU reservation"
    assert services["vllm"]["image"].startswith("vllm/vllm-openai")
    gpu_gw = services["gateway-gpu"]
    assert gpu_gw["environment"]["UNISR_VLLM_URL"] == "http://vllm:8000/v1"
    assert gpu_gw["build"]["args"]["EXTRAS"] == "gpu"
    assert "vllm" in _depends_on(gpu_gw) and "redis" in _depends_on(gpu_gw)
    assert "/healthz" in _healthcheck_text(gpu_gw)
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


def test_entrypoint_executable():
    assert ENTRYPOINT.is_file()
    assert os.access(ENTRYPOINT, os.X_OK), "deploy/entrypoint.sh is not executable"
    text = ENTRYPOINT.read_text()
    assert "recommend/sasrec/meta.json" in text
    for step in ("indexing.prepare", "indexing.build", "training.train_sasrec"):
        assert f"python -m {step}" in text, step
    assert "exec python -m service" in text and "UNISR_HOST=0.0.0.0" in text
    r = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
