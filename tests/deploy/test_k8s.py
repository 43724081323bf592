"""deploy/k8s: schema-valid for the Kubernetes version we target, and shaped for scale."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, find_tool

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
Resources = dict[tuple[str, str], dict[str, Any]]
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - a fixed argument list
        [find_tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION,
         *map(str, paths)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def resources() -> Resources:
    found: Resources = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _container(resource: dict[str, Any]) -> dict[str, Any]:
    spec = resource["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = spec["containers"]
    return containers[0]


def test_every_manifest_passes_strict_schema_validation() -> None:
    done = validate(*MANIFESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_strict_validation_rejects_a_misspelled_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "20-registry.yaml").read_text().replace("replicas: 2", "replica: 2"))
    done = validate(bad)
    assert done.returncode != 0
    assert "replica" in done.stdout + done.stderr


def test_kustomization_applies_every_manifest_but_the_job_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = {p.name for p in MANIFESTS if p.name != "trainer-job-template.yaml"}
    assert set(kustomization["resources"]) == expected


def test_gateway_is_a_deployment_with_an_autoscaler_behind_a_service(resources: Resources) -> None:
    hpa = resources[("HorizontalPodAutoscaler", "gateway")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway",
    }  # fmt: skip
    assert resources[("Service", "gateway")]["spec"]["selector"] == {
        "app.kubernetes.io/name": "gateway"
    }
    probe = _container(resources[("Deployment", "gateway")])["readinessProbe"]
    assert probe["httpGet"]["path"] == "/health"


def test_gateway_replicas_share_only_postgresql(resources: Resources) -> None:
    """Several replicas (leases and deployment sync make that safe), each with a model cache of
    its own: no volume one pod would hold (a ReadWriteOnce claim) and the others wait for."""
    assert resources[("HorizontalPodAutoscaler", "gateway")]["spec"]["minReplicas"] >= 2
    deployment = resources[("Deployment", "gateway")]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert all("persistentVolumeClaim" not in volume for volume in volumes)
    env = {e["name"]: e.get("value", "") for e in _container(deployment)["env"]}
    assert env["FORGELINE_GATEWAY_DATABASE_URL"].startswith("postgresql://")


def test_vllm_splits_the_model_over_the_gpus_it_requests(resources: Resources) -> None:
    container = _container(resources[("Deployment", "vllm")])
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert args["tensor-parallel-size"] == gpus
    assert "--enable-lora" in container["args"]


def test_minio_runs_distributed_over_every_replica(resources: Resources) -> None:
    minio = resources[("StatefulSet", "minio")]
    replicas = minio["spec"]["replicas"]
    assert replicas >= 4, "erasure coding needs at least 4 drives"
    pool = _container(minio)["args"][1]
    assert f"{{0...{replicas - 1}}}" in pool
    assert minio["spec"]["podManagementPolicy"] == "Parallel"


def test_training_runs_on_gpu_nodes(resources: Resources) -> None:
    for kind, name in (("Deployment", "trainer"), ("Job", "ft-example")):
        resource = resources[(kind, name)]
        spec = resource["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert "nvidia.com/gpu" in _container(resource)["resources"]["limits"]
    job = resources[("Job", "ft-example")]
    env = {e["name"]: e for e in _container(job)["env"]}
    assert env["NNODES"]["value"] == str(job["spec"]["completions"])
    assert env["FORCE_TORCHRUN"]["value"] == "1"


def test_no_secret_value_is_written_in_the_manifests(resources: Resources) -> None:
    assert not [key for key in resources if key[0] == "Secret"]
    for resource in resources.values():
        if resource["kind"] in {"Deployment", "StatefulSet", "Job"}:
            for variable in _container(resource).get("env", []):
                if any(w in variable["name"] for w in ("PASSWORD", "SECRET", "TOKEN", "KEY")):
                    assert "valueFrom" in variable, variable["name"]


def test_prometheus_scrapes_every_forgeline_pod(resources: Resources) -> None:
    # Debian's promtool is built without Kubernetes service discovery, so this config is
    # checked by shape here (the compose configs are checked by promtool in test_observability).
    config = yaml.safe_load(resources[("ConfigMap", "prometheus-config")]["data"]["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    pods = jobs["forgeline-pods"]
    assert pods["kubernetes_sd_configs"] == [
        {"role": "pod", "namespaces": {"names": ["forgeline"]}}
    ]
    keep = pods["relabel_configs"][0]
    assert keep["action"] == "keep"
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    for name in ("registry", "trainer", "converter", "gateway", "vllm"):
        annotations = resources[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
    assert resources[("Role", "prometheus")]["rules"][0]["verbs"] == ["get", "list", "watch"]


def test_prometheus_scrapes_each_service_on_its_metrics_port_not_its_api(
    resources: Resources,
) -> None:
    for name in ("registry", "trainer", "converter", "gateway"):
        deployment = resources[("Deployment", name)]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        container = _container(deployment)
        env = {v["name"]: v.get("value") for v in container["env"]}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        prefix = f"FORGELINE_{name.upper()}_"
        assert env[f"{prefix}METRICS_HOST"] == "0.0.0.0", name
        assert annotations["prometheus.io/port"] == env[f"{prefix}METRICS_PORT"] == "9464", name
        assert ports["metrics"] == 9464, name
    # The gateway's Service is what an Ingress or LoadBalancer publishes: its API only.
    service_ports = resources[("Service", "gateway")]["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["http"]


def _admitted(policy: dict[str, Any], pod: dict[str, str], port: int) -> set[str]:
    """The app names a policy lets reach `port` of a pod with labels `pod` ("*": anyone)."""
    selector = policy["spec"]["podSelector"]
    if not _selects(selector, pod):
        return set()
    admitted: set[str] = set()
    for rule in policy["spec"].get("ingress", []):
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports and port not in ports:
            continue
        if "from" not in rule:
            return {"*"}
        for peer in rule["from"]:
            selector = peer["podSelector"]
            names = selector.get("matchLabels", {}).get("app.kubernetes.io/name")
            if names:
                admitted.add(names)
            for expression in selector.get("matchExpressions", []):
                if expression["key"] == "app.kubernetes.io/name":
                    admitted |= set(expression["values"])
    return admitted


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "Exists" and value is None:
            return False
    return True


def _callers(resources: Resources, app: str, port: int) -> set[str]:
    policies = [r for (kind, _), r in resources.items() if kind == "NetworkPolicy"]
    return set().union(*(_admitted(p, {"app.kubernetes.io/name": app}, port) for p in policies))


def test_ingress_is_denied_unless_a_policy_allows_it(resources: Resources) -> None:
    deny = resources[("NetworkPolicy", "default-deny-ingress")]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert _callers(resources, "gateway", 8080) == {"*"}
    assert _callers(resources, "registry", 50051) == {"gateway", "trainer", "converter"}
    assert _callers(resources, "trainer", 50051) == {"gateway"}
    assert _callers(resources, "converter", 50051) == {"gateway"}
    assert _callers(resources, "vllm", 8000) == {"gateway", "prometheus"}
    assert "registry" in _callers(resources, "minio", 9000)
    assert _callers(resources, "postgres", 5432) == {"trainer", "converter", "gateway"}
    assert _callers(resources, "minio", 9001) == set()  # the console: kubectl port-forward only
    for app in ("registry", "trainer", "converter", "gateway"):
        assert _callers(resources, app, 9464) == {"prometheus"}


def test_the_services_carry_the_internal_token_from_a_secret(resources: Resources) -> None:
    for name in ("registry", "trainer", "converter", "gateway"):
        env = {v["name"]: v for v in _container(resources[("Deployment", name)])["env"]}
        token = env["FORGELINE_INTERNAL_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token == {"name": "forgeline-internal", "key": "token"}, name


def test_postgresql_is_one_statefulset_the_services_reach_through_a_secret(
    resources: Resources,
) -> None:
    postgres = resources[("StatefulSet", "postgres")]
    assert postgres["spec"]["replicas"] == 1
    assert postgres["spec"]["serviceName"] == "postgres-hl"
    assert resources[("Service", "postgres-hl")]["spec"]["clusterIP"] == "None"
    claim = postgres["spec"]["volumeClaimTemplates"][0]
    container = _container(postgres)
    assert container["image"].startswith("postgres:")
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == {
        claim["metadata"]["name"]: "/var/lib/postgresql/data"
    }
    env = {v["name"]: v for v in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "forgeline-postgres", "key": "password",
    }  # fmt: skip
    assert env["POSTGRES_USER"]["value"] == env["POSTGRES_DB"]["value"] == "forgeline"
    # Below the volume's root, which may hold lost+found.
    assert env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    assert container["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    service = resources[("Service", "postgres")]["spec"]
    assert service["selector"] == {"app.kubernetes.io/name": "postgres"}
    assert [p["port"] for p in service["ports"]] == [5432]
    config = resources[("ConfigMap", "forgeline-config")]["data"]
    for name in ("trainer", "converter", "gateway"):
        variables = [v["name"] for v in _container(resources[("Deployment", name)])["env"]]
        env = {v["name"]: v for v in _container(resources[("Deployment", name)])["env"]}
        url = env[f"FORGELINE_{name.upper()}_DATABASE_URL"]["value"]
        assert url == "postgresql://forgeline:$(POSTGRES_PASSWORD)@postgres:5432/forgeline", name
        # $(VAR) expands only a variable defined earlier in the list.
        assert variables.index("POSTGRES_PASSWORD") < variables.index(
            f"FORGELINE_{name.upper()}_DATABASE_URL"
        ), name
        assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "forgeline-postgres", "key": "password",
        }, name  # fmt: skip
        assert f"FORGELINE_{name.upper()}_DATABASE_URL" not in config, name


def test_the_readme_creates_every_secret_the_manifests_read(resources: Resources) -> None:
    readme = (K8S / "README.md").read_text()
    created = set(re.findall(r"create secret generic (\S+)", readme))
    read: set[str] = set()
    for resource in resources.values():
        if resource["kind"] in {"Deployment", "StatefulSet", "Job"}:
            for variable in _container(resource).get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    read.add(ref["name"])
    assert read <= created, sorted(read - created)
