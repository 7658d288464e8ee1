"""Write each chart's ``values.schema.json`` from the code's own configuration models.

Why generated: the ``config`` and ``policy`` sections of a chart's values become the process's
``coordinator.yaml``, ``node.yaml`` and ``policy.yaml``. Deriving their schema from the same
pydantic models that read those files (`CoordinatorConfig`, `NodeConfig`, `Policy`) means a key
the code does not know fails ``helm install`` (``additionalProperties: false``) instead of being
ignored, and a key added to the code reaches the chart by running this script, never by hand.
The keys the chart itself sets (TLS files, listen hosts, the state location, the health port)
are removed from the operator's schema: they follow the container's mounts, not a choice.

    python deploy/helm/generate_schemas.py          # rewrite both schemas
    python deploy/helm/generate_schemas.py --check  # exit 1 if a committed schema is stale
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ehds.coordinator.config import CoordinatorConfig
from ehds.node.config import NodeConfig
from ehds.node.policy import Policy

HELM_DIR = Path(__file__).resolve().parent
JSON_SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"

Json = dict[str, Any]

# Keys of the process configuration that the chart sets from its own mounts and ports.
COORDINATOR_OWNED = (
    "tls",
    "health",
    "state",
    "listen.host",
    "token_listen",
    "revocation.crl",
    "fl.work_dir",
    "fl.python",
)
NODE_OWNED = (
    "tls",
    "health",
    "state",
    "policy",
    "cdm.url_file",
    "cdm.results",
    "cdm.spark.warehouse",
)


class _Values(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Image(_Values):
    """The ehds image; the tag defaults to the chart's appVersion (``-spark`` for a Spark CDM)."""

    repository: str = Field(default="ghcr.io/ehds-federation/ehds", min_length=1)
    tag: str = Field(default="", description="default: the chart's appVersion")
    digest: str = Field(default="", pattern=r"^(sha256:[0-9a-f]{64})?$")
    pullPolicy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"


class IssuerRef(_Values):
    name: str = Field(min_length=1)
    kind: Literal["Issuer", "ClusterIssuer"] = "Issuer"
    group: str = "cert-manager.io"


class CertManager(_Values):
    """A cert-manager Certificate writing ``tls.secretName`` (tls.crt, tls.key, ca.crt), issued by
    an Issuer backed by the federation CA: subject O=federation, OU=role, CN=name, as
    ``ehds pki issue`` makes them."""

    enabled: bool = False
    issuerRef: IssuerRef | None = None
    federation: str = Field(default="", description="the CA's federation name (subject O)")
    name: str = Field(default="", description="participant name (subject CN); default: release")
    dnsNames: list[str] = Field(default_factory=list)
    duration: str = "2160h"
    renewBefore: str = "360h"


class Tls(_Values):
    """The Secret with this participant's ``tls.crt``, ``tls.key`` and the federation ``ca.crt``."""

    secretName: str = Field(default="", description="default: RELEASE-tls")
    certManager: CertManager = CertManager()


class SecretKeyRef(_Values):
    secretName: str = ""
    key: str = "url"


class Persistence(_Values):
    size: str = "5Gi"
    storageClass: str | None = None
    accessModes: list[str] = Field(default_factory=lambda: ["ReadWriteOnce"])
    existingClaim: str = ""


class ServiceMonitor(_Values):
    enabled: bool = False
    interval: str = "30s"
    labels: dict[str, str] = Field(default_factory=dict)


class Metrics(_Values):
    podAnnotations: bool = Field(default=True, description="prometheus.io/scrape annotations")
    serviceMonitor: ServiceMonitor = ServiceMonitor()


class GrafanaDashboard(_Values):
    enabled: bool = False
    labels: dict[str, str] = Field(default_factory=lambda: {"grafana_dashboard": "1"})


class Common(_Values):
    """Values both charts share (the library chart's templates read them)."""

    image: Image = Image()
    imagePullSecrets: list[dict[str, str]] = Field(default_factory=list)
    nameOverride: str = ""
    fullnameOverride: str = ""
    podLabels: dict[str, str] = Field(default_factory=dict)
    podAnnotations: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, dict[str, str | int]] = Field(default_factory=dict)
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    tmpSize: str = Field(default="1Gi", description="size limit of the /tmp emptyDir")
    logLevel: Literal["info", "warning"] = Field(
        default="info", description="info: `ehds -v` (connections, policy, isolation lines)"
    )
    tls: Tls = Tls()
    persistence: Persistence = Persistence()
    metrics: Metrics = Metrics()
    grafanaDashboard: GrafanaDashboard = GrafanaDashboard()
    # Keys Helm itself adds when it merges values: one per dependency, and `global`.
    library: dict[str, Any] = Field(default_factory=dict, alias="ehds-common")
    global_: dict[str, Any] = Field(default_factory=dict, alias="global")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="public files beside the configuration (HDAB public keys, an OIDC JWKS), "
        "by file name; config and policy refer to them by that name",
        json_schema_extra={"propertyNames": {"pattern": r"^[A-Za-z0-9][-._A-Za-z0-9]*$"}},
    )


class Service(_Values):
    type: Literal["LoadBalancer", "ClusterIP", "NodePort"] = "LoadBalancer"
    port: int = Field(default=443, ge=1, le=65535)
    tokenPort: int = Field(default=8443, ge=1, le=65535)
    annotations: dict[str, str] = Field(default_factory=dict)
    loadBalancerSourceRanges: list[str] = Field(default_factory=list)
    externalTrafficPolicy: Literal["Cluster", "Local"] = "Local"


class Ingress(_Values):
    """TLS passthrough only: the coordinator must see each node's client certificate."""

    enabled: bool = False
    className: str = "nginx"
    host: str = ""
    tokenHost: str = ""
    annotations: dict[str, str] = Field(default_factory=dict)


class Crl(_Values):
    configMapName: str = Field(default="", description="ConfigMap with the federation CRL")
    key: str = "crl.pem"


class Migrations(_Values):
    activeDeadlineSeconds: int = Field(default=600, ge=1)
    backoffLimit: int = Field(default=1, ge=0)


class CoordinatorValues(Common):
    service: Service = Service()
    ingress: Ingress = Ingress()
    database: SecretKeyRef = SecretKeyRef()
    crl: Crl = Crl()
    migrations: Migrations = Migrations()
    config: dict[str, Any] = Field(default_factory=dict)


class PeerRule(_Values):
    cidrs: list[str] = Field(default_factory=list)
    port: int | None = Field(default=None, ge=1, le=65535)


class MetricsSource(_Values):
    namespaceSelector: dict[str, Any] = Field(
        default_factory=lambda: {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    )
    podSelector: dict[str, Any] = Field(default_factory=dict)


class Dns(_Values):
    namespaceSelector: dict[str, Any] = Field(
        default_factory=lambda: {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    )
    podSelector: dict[str, Any] = Field(
        default_factory=lambda: {"matchLabels": {"k8s-app": "kube-dns"}}
    )


class NetworkPolicy(_Values):
    """The node's NetworkPolicy: nothing in but metrics scrapes, nothing out but the coordinator
    (or the site's proxy to it), the CDM database and DNS."""

    enabled: bool = True
    coordinator: PeerRule = PeerRule()
    database: PeerRule = PeerRule()
    dns: Dns = Dns()
    metrics: MetricsSource = MetricsSource()
    extraIngress: list[dict[str, Any]] = Field(default_factory=list)
    extraEgress: list[dict[str, Any]] = Field(default_factory=list)


class CdmVolume(_Values):
    existingClaim: str = Field(default="", description="PVC with the DuckDB CDM or Parquet layout")
    mountPath: str = "/data/cdm"


class NodeValues(Common):
    cdmVolume: CdmVolume = CdmVolume()
    cdmDatabase: SecretKeyRef = SecretKeyRef()
    networkPolicy: NetworkPolicy = NetworkPolicy()
    config: dict[str, Any] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)


def _dereference(node: Any, defs: Json) -> Any:
    """Inline every ``$ref`` (the models are not recursive): simpler for every validator."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            resolved = _dereference(copy.deepcopy(defs[name]), defs)
            rest = {k: _dereference(v, defs) for k, v in node.items() if k != "$ref"}
            return {**resolved, **rest}
        return {k: _dereference(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_dereference(item, defs) for item in node]
    return node


def _tidy(node: Any) -> Any:
    """Drop what helps no validator: titles, ``format: path`` (not a JSON Schema format), and
    object defaults (they would still show keys removed as chart-owned)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            if key == "format" and value == "path":
                continue
            if key == "default" and isinstance(value, dict):
                continue
            out[key] = _tidy(value)
        return out
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    return node


def model_schema(model: type[BaseModel]) -> Json:
    schema = model.model_json_schema(mode="validation")
    result: Json = _tidy(_dereference(schema, schema.get("$defs", {})))
    return result


def _object_at(schema: Json, parts: list[str]) -> Json:
    node = schema
    for part in parts:
        node = node["properties"][part]
        if "anyOf" in node:
            node = next(option for option in node["anyOf"] if option.get("type") == "object")
    return node


def drop_keys(schema: Json, dotted: tuple[str, ...]) -> Json:
    """``schema`` without the given properties (and no longer requiring them)."""
    schema = copy.deepcopy(schema)
    for path in dotted:
        *parents, leaf = path.split(".")
        owner = _object_at(schema, parents)
        owner["properties"].pop(leaf)
        required = [key for key in owner.get("required", []) if key != leaf]
        if required:
            owner["required"] = required
        else:
            owner.pop("required", None)
    return schema


def chart_schema(values: type[BaseModel], sections: dict[str, Json], chart: str) -> Json:
    schema = model_schema(values)
    for name, model_section in sections.items():
        section = dict(model_section)
        section.pop("required", None)
        section["description"] = (
            f"rendered as the {chart}'s {name} file (see deploy/examples/); keys the chart "
            "sets from its mounts are not accepted here"
        )
        schema["properties"][name] = section
    schema.pop("description", None)
    return {"$schema": JSON_SCHEMA_DRAFT, "title": f"ehds {chart} chart values", **schema}


def schemas() -> dict[Path, Json]:
    coordinator = chart_schema(
        CoordinatorValues,
        {"config": drop_keys(model_schema(CoordinatorConfig), COORDINATOR_OWNED)},
        "coordinator",
    )
    node = chart_schema(
        NodeValues,
        {
            "config": drop_keys(model_schema(NodeConfig), NODE_OWNED),
            "policy": model_schema(Policy),
        },
        "node",
    )
    return {
        HELM_DIR / "coordinator" / "values.schema.json": coordinator,
        HELM_DIR / "node" / "values.schema.json": node,
    }


def render(schema: Json) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a schema is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, schema in schemas().items():
        text = render(schema)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HELM_DIR.parent.parent)}")
    for path in stale:
        print(f"{path} is stale: run python deploy/helm/generate_schemas.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
