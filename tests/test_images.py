"""The OCI image definitions (deploy/images/): what can be checked without a registry or a Docker
daemon, neither of which is reachable here (no image is built by the suite; README says so).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "deploy" / "images"
CONTAINERFILE = (IMAGES / "Containerfile").read_text()
IMAGE_EXTRAS = ("server", "postgres", "llamacpp", "gpu")  # what coordinator and workers need


def _stages() -> dict[str, str]:
    """target name -> the text of its stage."""
    parts = re.split(r"^FROM ", CONTAINERFILE, flags=re.M)[1:]
    return {p.split("\n", 1)[0].split(" AS ")[1].strip(): p for p in parts}


def _locked() -> dict[str, tuple[str, list[str]]]:
    out, name = {}, None
    for line in (IMAGES / "requirements.lock").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line):
            name = m.group(1).lower().replace("_", "-")
            out[name] = (m.group(2), [])
        elif (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)) and name:
            out[name][1].append(h.group(1))
    return out


def test_three_targets_on_pinned_bases() -> None:
    stages = _stages()
    assert {"coordinator", "worker", "worker-gpu"} <= set(stages)
    for line in re.findall(r"^FROM (\S+)", CONTAINERFILE, flags=re.M):
        assert line.startswith("${") or line in stages, f"FROM {line}: a base must come from a pinned ARG or a stage"
    # the ARGs have no default: build.sh passes them from the lock, pinned by digest
    assert re.search(r"^ARG PYTHON_IMAGE$", CONTAINERFILE, flags=re.M)
    assert re.search(r"^ARG CUDA_IMAGE$", CONTAINERFILE, flags=re.M)
    assert "latest" not in CONTAINERFILE
    lock = [ln.split() for ln in (IMAGES / "base-images.lock").read_text().splitlines() if ln and not ln.startswith("#")]
    assert {n for n, _ in lock} == {"PYTHON_IMAGE", "CUDA_IMAGE"}


def test_every_python_install_is_hash_pinned_or_offline() -> None:
    for cmd in re.findall(r"pip (?:install|wheel)[^\n]*", CONTAINERFILE):
        assert "--require-hashes" in cmd or "--no-index" in cmd, cmd


def test_images_run_as_the_charts_uid() -> None:
    chart = (ROOT / "deploy" / "helm" / "veil" / "templates" / "coordinator.yaml").read_text()
    assert "runAsUser: 10001" in chart
    for target in ("coordinator", "worker", "worker-gpu"):
        stage = _stages()[target]
        assert "USER 10001:10001" in stage, target
        assert re.search(r'^ENTRYPOINT \[.*"veil"\]', stage, flags=re.M), target


def test_the_lock_covers_pyproject_and_pins_every_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [Requirement(d) for d in project["dependencies"] + [d for e in IMAGE_EXTRAS for d in extras[e]]]
    listed = [
        Requirement(line) for line in (IMAGES / "requirements.in").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert {str(r) for r in wanted} <= {str(r) for r in listed}, "requirements.in is pyproject's core + image extras"
    locked = _locked()
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in locked, f"{name} is not locked (run sh deploy/images/lock.sh)"
        version, hashes = locked[name]
        assert req.specifier.contains(Version(version), prereleases=True), (name, version, str(req.specifier))
    assert all(hashes for _, hashes in locked.values()), "every locked package pins its files by sha256"
