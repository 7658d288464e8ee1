"""The Helm charts: linted, rendered for every values file under deploy/helm/values, each manifest
validated against the Kubernetes API schemas offline, and read back for the properties an
operator relies on (non-root, read-only, nothing into a node but metrics scrapes, upgrades
without two writers) and for the configuration the processes will load."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from ehds.coordinator.config import load_coordinator_config
from ehds.node.config import EngineName, load_node_config
from ehds.node.policy import load_policy, trusted_keys
from helm_charts import (
    CHARTS,
    HELM_DIR,
    KUBE_VERSIONS,
    LIBRARY,
    ROOT,
    Rendered,
    chart_of,
    copy_charts,
    lint,
    load_values,
    render,
    values_files,
)

VALUES = values_files()
NODE_VALUES = [path for path in VALUES if chart_of(path) == "node"]
COORDINATOR_VALUES = [path for path in VALUES if chart_of(path) == "coordinator"]
CRD_KINDS = {
    # Custom resources: kubernetes-validate bundles the core API's schemas only, and the CRDs'
    # own schemas cannot be fetched offline, so these are checked field by field below.
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("cert-manager.io/v1", "Certificate"),
}
WORKLOAD_KINDS = ("Deployment", "Job")
MOUNT_ROOTS = ("/etc/ehds/", "/var/lib/ehds")


def _id(path: Path) -> str:
    return path.stem


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return copy_charts(tmp_path_factory.mktemp("charts"))


@pytest.fixture(scope="module")
def rendered(charts: dict[str, Path]) -> dict[str, Rendered]:
    return {path.stem: render(charts[chart_of(path)], load_values(path)) for path in VALUES}


def _pod_specs(manifests: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [
        (document["metadata"]["name"], document["spec"]["template"]["spec"])
        for kind in WORKLOAD_KINDS
        for document in manifests.of_kind(kind)
    ]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _command(container: dict[str, Any]) -> list[str]:
    """The `ehds` subcommand a container runs, without the global log flag."""
    args: list[str] = container["args"]
    return args[1:] if args[:1] == ["-v"] else args


# ----------------------------------------------------------------------------- the charts


def test_ci_renders_minimal_production_and_spark_configurations() -> None:
    names = {path.stem for path in VALUES}
    assert {
        "coordinator-minimal",
        "coordinator-production",
        "node-minimal",
        "node-production",
        "node-spark",
    } <= names


def test_chart_versions_are_the_package_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = project["project"]["version"]
    for name in (LIBRARY, *CHARTS):
        chart = yaml.safe_load((HELM_DIR / name / "Chart.yaml").read_text(encoding="utf-8"))
        assert (chart["version"], chart["appVersion"]) == (version, version), name
        for dependency in chart.get("dependencies", []):
            assert dependency == {
                "name": LIBRARY,
                "version": version,
                "repository": f"file://../{LIBRARY}",
            }
    assert yaml.safe_load((HELM_DIR / LIBRARY / "Chart.yaml").read_text())["type"] == "library"


def test_values_schemas_are_generated_from_the_config_models() -> None:
    script = HELM_DIR / "generate_schemas.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_object_in_the_values_schemas_refuses_unknown_keys() -> None:
    def objects(node: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
        found = []
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                found.append((where, node))
            for key, value in node.items():
                found += objects(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                found += objects(value, f"{where}[{index}]")
        return found

    for chart in CHARTS:
        schema = json.loads((HELM_DIR / chart / "values.schema.json").read_text())
        found = objects(schema, chart)
        assert len(found) > 20
        for where, node in found:
            assert node.get("additionalProperties") is False, where


@pytest.mark.parametrize("values_file", VALUES, ids=_id)
def test_helm_lint_is_clean(charts: dict[str, Path], values_file: Path) -> None:
    assert lint(charts[chart_of(values_file)], load_values(values_file)) == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", VALUES, ids=_id)
def test_every_manifest_is_valid_kubernetes(
    rendered: dict[str, Rendered], values_file: Path, kube_version: str
) -> None:
    manifests = rendered[values_file.stem]
    assert len(manifests.documents) >= 4
    for template, document in manifests.documents:
        if (document["apiVersion"], document["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(document, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{template}: {exc.message} at {list(exc.path)}")


@pytest.mark.parametrize("values_file", VALUES, ids=_id)
def test_custom_resources_carry_what_their_operators_need(
    rendered: dict[str, Rendered], values_file: Path
) -> None:
    manifests = rendered[values_file.stem]
    for monitor in manifests.of_kind("ServiceMonitor"):
        service = manifests.one("Service", "-metrics")
        assert monitor["spec"]["selector"]["matchLabels"].items() <= (
            service["metadata"]["labels"].items()
        )
        assert monitor["spec"]["endpoints"] == [
            {"port": "health", "path": "/metrics", "interval": "30s"}
        ]
    for certificate in manifests.of_kind("Certificate"):
        spec = certificate["spec"]
        deployment = manifests.one("Deployment")
        secrets = [
            volume["secret"]["secretName"]
            for volume in deployment["spec"]["template"]["spec"]["volumes"]
            if volume["name"] == "tls"
        ]
        assert secrets == [spec["secretName"]]
        assert spec["subject"]["organizationalUnits"] == [chart_of(values_file)]
        assert spec["issuerRef"]["name"]
        assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}


# ----------------------------------------------------------------------------- security


@pytest.mark.parametrize("values_file", VALUES, ids=_id)
def test_every_container_runs_as_non_root_read_only_without_privileges(
    rendered: dict[str, Rendered], values_file: Path
) -> None:
    pods = _pod_specs(rendered[values_file.stem])
    assert pods
    for name, pod in pods:
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == context["runAsGroup"] == 10001, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(forbidden), name
        for container in _containers(pod):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["runAsUser"] != 0, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["privileged"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert not container["image"].endswith(":latest"), where
            # Everything writable is a volume: /tmp (emptyDir) and, beside a process, its state.
            writable = {
                mount["mountPath"]
                for mount in container["volumeMounts"]
                if not mount.get("readOnly")
            }
            assert writable <= {"/tmp", "/var/lib/ehds"}, where


@pytest.mark.parametrize("values_file", VALUES, ids=_id)
def test_secrets_are_mounted_never_rendered(
    rendered: dict[str, Rendered], values_file: Path
) -> None:
    manifests = rendered[values_file.stem]
    assert manifests.of_kind("Secret") == []
    for config_map in manifests.of_kind("ConfigMap"):
        text = yaml.safe_dump(config_map)
        assert "PRIVATE KEY" not in text
        assert "postgresql" not in text


@pytest.mark.parametrize("values_file", NODE_VALUES, ids=_id)
def test_node_receives_no_traffic_but_metrics_scrapes(
    rendered: dict[str, Rendered], values_file: Path
) -> None:
    manifests = rendered[values_file.stem]
    deployment = manifests.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "health", "containerPort": 9465, "protocol": "TCP"}]

    policy = manifests.one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    # The policy selects exactly the node's pods: its labels are a subset of theirs.
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": 9465, "protocol": "TCP"}]
    (source,) = rule["from"]
    assert set(source) <= {"namespaceSelector", "podSelector"}
    assert source["namespaceSelector"]["matchLabels"]

    # No Service offers the node anything but its metrics, and none is reachable from outside.
    (service,) = manifests.of_kind("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["health"]
    assert manifests.of_kind("Ingress") == []


@pytest.mark.parametrize("values_file", NODE_VALUES, ids=_id)
def test_node_egress_reaches_only_the_coordinator_its_database_and_dns(
    rendered: dict[str, Rendered], values_file: Path
) -> None:
    values = load_values(values_file)
    policy = rendered[values_file.stem].one("NetworkPolicy")["spec"]
    endpoint = values["config"]["coordinator"]
    expected_port = int((endpoint.get("proxy") or endpoint["address"]).rstrip("/").split(":")[-1])
    coordinator, *rest = policy["egress"]
    assert coordinator == {
        "to": [{"ipBlock": {"cidr": c}} for c in values["networkPolicy"]["coordinator"]["cidrs"]],
        "ports": [{"port": expected_port, "protocol": "TCP"}],
    }
    database = values["networkPolicy"].get("database", {})
    if database.get("cidrs"):
        rule, *rest = rest
        assert rule == {
            "to": [{"ipBlock": {"cidr": cidr}} for cidr in database["cidrs"]],
            "ports": [{"port": database["port"], "protocol": "TCP"}],
        }
    (dns,) = rest
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    for rule in policy["egress"]:
        # An egress rule without peers or without ports allows every peer or every port.
        assert rule["to"], rule
        assert rule["ports"], rule


def test_node_network_policy_needs_the_coordinator_address_range(
    charts: dict[str, Path],
) -> None:
    values = load_values(HELM_DIR / "values" / "node-minimal.yaml")
    values["networkPolicy"] = {"coordinator": {"cidrs": []}}
    with pytest.raises(helm_python.HelmRenderError, match=r"networkPolicy\.coordinator\.cidrs"):
        render(charts["node"], values)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("chart", "mistake", "key"),
    [
        ("node", {"config": {"coordinator": {"adress": "c.example.eu:443"}}}, "adress"),
        ("node", {"policy": {"min_cel_count": 5}}, "min_cel_count"),
        ("node", {"netwrokPolicy": {"enabled": False}}, "netwrokPolicy"),
        ("node", {"config": {"tls": {"ca": "/elsewhere"}}}, "tls"),
        ("coordinator", {"config": {"studies": {"min_cell_cout": 5}}}, "min_cell_cout"),
        ("coordinator", {"ingres": {"enabled": True}}, "ingres"),
        ("coordinator", {"config": {"state": {"url": "sqlite://"}}}, "state"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_misspelt_or_chart_owned_values_key_fails_rendering(
    charts: dict[str, Path], chart: str, mistake: dict[str, Any], key: str
) -> None:
    base = load_values(HELM_DIR / "values" / f"{chart}-minimal.yaml")
    values = _merge(base, mistake)
    with pytest.raises(helm_python.HelmValuesError, match=key):
        render(charts[chart], values)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize("values_file", VALUES, ids=_id)
def test_rendered_configuration_is_what_the_process_loads(
    rendered: dict[str, Rendered], values_file: Path, tmp_path: Path
) -> None:
    """The ConfigMap, written where the pod mounts it (under tmp_path), read by the code."""
    manifests = rendered[values_file.stem]
    config_map = manifests.one("ConfigMap", f"-{chart_of(values_file)}")
    folder = tmp_path / "etc/ehds/config"
    folder.mkdir(parents=True)
    for name, text in config_map["data"].items():
        content = text
        for root in MOUNT_ROOTS:
            content = content.replace(root, f"{tmp_path}{root}")
        (folder / name).write_text(content, encoding="utf-8")
    database = tmp_path / "etc/ehds/db/url"
    database.parent.mkdir(parents=True)
    database.write_text("postgresql+psycopg://ehds:secret@db.example.eu/omop\n")

    if chart_of(values_file) == "node":
        node = load_node_config(folder / "node.yaml")
        assert (node.health.host, node.health.port) == ("0.0.0.0", 9465)
        assert node.state == tmp_path / "var/lib/ehds/node-state.db"
        assert node.tls.key == tmp_path / "etc/ehds/tls/tls.key"
        policy = load_policy(node.policy)
        assert len(trusted_keys(policy, node.policy)) == len(policy.hdab_keys)
        values = load_values(values_file)
        expected = {"cdmDatabase": EngineName.POSTGRESQL, "spark": EngineName.SPARK}
        engine = next(
            (engine for key, engine in expected.items() if key in yaml.safe_dump(values)),
            EngineName.DUCKDB,
        )
        assert node.cdm.engine is engine
    else:
        coordinator = load_coordinator_config(folder / "coordinator.yaml")
        assert coordinator.listen.host == "0.0.0.0"
        assert coordinator.health.port == 9464
        for key in coordinator.permits.hdab_keys:
            key.load()
        external = "database" in load_values(values_file)
        assert coordinator.state.url.startswith("postgresql" if external else "sqlite:////")


# ----------------------------------------------------------------------------- operations


@pytest.mark.parametrize("values_file", VALUES, ids=_id)
def test_probes_use_the_plain_health_port_only(
    rendered: dict[str, Rendered], values_file: Path
) -> None:
    deployment = rendered[values_file.stem].one("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    health = next(port for port in container["ports"] if port["name"] == "health")
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(health["containerPort"])


@pytest.mark.parametrize("values_file", VALUES, ids=_id)
def test_upgrades_never_run_two_writers(rendered: dict[str, Rendered], values_file: Path) -> None:
    manifests = rendered[values_file.stem]
    deployment = manifests.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    chart = chart_of(values_file)
    external = "database" in load_values(values_file)
    init = [_command(container)[:2] for container in pod.get("initContainers", [])]
    jobs = manifests.of_kind("Job")
    if external:
        # PostgreSQL: one hook Job migrates before Helm touches the Deployment.
        assert init == []
        (job,) = jobs
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert _command(job["spec"]["template"]["spec"]["containers"][0])[:2] == [
            chart,
            "migrate",
        ]
        hook_config = manifests.one("ConfigMap", "-migrate")
        weight = int(hook_config["metadata"]["annotations"]["helm.sh/hook-weight"])
        assert weight < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
        main_config = manifests.one("ConfigMap", f"-{chart}")
        assert hook_config["data"][f"{chart}.yaml"] == main_config["data"][f"{chart}.yaml"]
    else:
        assert init == [[chart, "migrate"]]
        assert jobs == []
        claims = [
            volume["persistentVolumeClaim"]["claimName"]
            for volume in pod["volumes"]
            if volume["name"] == "state"
        ]
        (claim,) = manifests.of_kind("PersistentVolumeClaim")
        assert claims == [claim["metadata"]["name"]]
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_config_change_restarts_the_pod(charts: dict[str, Path]) -> None:
    values = load_values(HELM_DIR / "values" / "node-minimal.yaml")
    before = render(charts["node"], values).one("Deployment")
    values["policy"]["min_cell_count"] = 20
    after = render(charts["node"], values).one("Deployment")

    def checksum(deployment: dict[str, Any]) -> str:
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum(before) != checksum(after)


def test_coordinator_is_exposed_by_tcp_passthrough_only(rendered: dict[str, Rendered]) -> None:
    minimal = rendered["coordinator-minimal"]
    service = minimal.one("Service", "-coordinator")
    assert service["spec"]["type"] == "LoadBalancer"
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["grpc"]
    assert minimal.of_kind("Ingress") == []

    production = rendered["coordinator-production"]
    assert production.one("Service", "-coordinator")["spec"]["type"] == "ClusterIP"
    ingress = production.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    assert "tls" not in ingress["spec"], "terminating TLS would replace each node's identity"
    ports = {
        rule["host"]: rule["http"]["paths"][0]["backend"]["service"]["port"]["name"]
        for rule in ingress["spec"]["rules"]
    }
    assert ports == {
        "coordinator.federation.example.eu": "grpc",
        "researchers.federation.example.eu": "grpc-token",
    }


def test_spark_node_runs_the_java_image(rendered: dict[str, Rendered]) -> None:
    images = {
        name: {
            container["image"]
            for _, pod in _pod_specs(rendered[name])
            for container in _containers(pod)
        }
        for name in ("node-minimal", "node-spark")
    }
    assert images == {
        "node-minimal": {"ghcr.io/ehds-federation/ehds:0.1.0"},
        "node-spark": {"ghcr.io/ehds-federation/ehds:0.1.0-spark"},
    }


@pytest.mark.parametrize("chart", CHARTS)
def test_grafana_dashboards_ship_as_an_optional_config_map(
    charts: dict[str, Path], chart: str
) -> None:
    values = load_values(HELM_DIR / "values" / f"{chart}-minimal.yaml")
    assert render(charts[chart], values).of_kind("ConfigMap")[0]["metadata"]["name"].endswith(chart)
    assert all(
        not document["metadata"]["name"].endswith("-dashboards")
        for document in render(charts[chart], values).of_kind("ConfigMap")
    )
    values["grafanaDashboard"] = {"enabled": True}
    dashboards = render(charts[chart], values).one("ConfigMap", "-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = sorted(path.name for path in (HELM_DIR / chart / "dashboards").glob("*.json"))
    assert shipped
    assert sorted(dashboards["data"]) == shipped

    for name in shipped:
        assert json.loads(dashboards["data"][name])["panels"]


def test_a_file_the_policy_names_must_be_shipped(charts: dict[str, Path]) -> None:
    values = load_values(HELM_DIR / "values" / "node-minimal.yaml")
    values["files"] = {}
    with pytest.raises(helm_python.HelmRenderError, match=r"policy\.hdab_keys\.0\.public_key"):
        render(charts["node"], values)


@pytest.mark.parametrize(("level", "flags"), [("info", ["-v"]), ("warning", [])])
def test_log_level_sets_the_ehds_verbosity(
    charts: dict[str, Path], level: str, flags: list[str]
) -> None:
    values = load_values(HELM_DIR / "values" / "node-minimal.yaml")
    values["logLevel"] = level
    pod = render(charts["node"], values).one("Deployment")["spec"]["template"]["spec"]
    assert [container["args"] for container in _containers(pod)] == [
        [*flags, "node", "migrate", "--config", "/etc/ehds/config/node.yaml"],
        [*flags, "node", "serve", "--config", "/etc/ehds/config/node.yaml"],
    ]
