"""deploy/ stays true to the gateway: env names it reads, ports it listens on, paths it serves, policies it loads.

No docker, no kubectl: the manifests are parsed, and the configs and policies they
carry are loaded with the gateway's own loaders.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from agentgw.app import CHAT_PREFIX, MCP_PREFIX, create_app
from agentgw.errors import WELL_KNOWN_METADATA

# AGENTGW_CONFIG and AGENTGW_POLICIES are read outside the override table, and
# test_config_and_policies_env_are_read proves that they are; the trusted-proxy
# variable is proven in tests/auth/test_jwt.py.
from agentgw.cli import TRUSTED_PROXIES_ENV
from agentgw.config import ENV_OVERRIDES, Settings, config_path, load_settings, split_host_port
from agentgw.inbound.a2a import A2A_PREFIX
from agentgw.policy.loader import load_policies
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
GATEWAY_ENV = frozenset(ENV_OVERRIDES) | {"AGENTGW_CONFIG", "AGENTGW_POLICIES", TRUSTED_PROXIES_ENV}
NAMESPACE = "ai-inference"
HTTP_PORT, METRICS_PORT = 8080, 9090


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@functools.cache
def manifests() -> list[dict[str, Any]]:
    """Every object under deploy/k8s, parsed once per run; the tests only read them."""
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml" for doc in documents(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def gateway_container() -> dict[str, Any]:
    containers = find("Deployment", "agentgw")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "agentgw")


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = find("Deployment", "agentgw")["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe or Service port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in container["ports"] if p.get("name") == port)


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container["env"] if "value" in e}


def policy_secret_envs(paths: list[str]) -> set[str]:
    policies = load_policies(paths)
    return {a.spec.jwt_validation.secret_env for a in policies.auth if a.spec.jwt_validation.secret_env}


def llm_key_envs(settings: Settings) -> set[str]:
    return {p.api_key_env for p in settings.llm.providers if p.api_key_env}


def configmap_file(tmp: Path, configmap: str, key: str) -> Path:
    path = tmp / key
    path.write_text(find("ConfigMap", configmap)["data"][key], encoding="utf-8")
    return path


def policies_dir(tmp: Path) -> Path:
    folder = tmp / "policies"
    folder.mkdir()
    for name, text in find("ConfigMap", "agentgw-policies")["data"].items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def k8s_settings(tmp: Path, **overrides: str) -> Settings:
    """The Deployment's config as the pod loads it: the ConfigMap's agentgw.yaml plus the container env."""
    env = {**plain_env(gateway_container()), **overrides}
    return load_settings(configmap_file(tmp, "agentgw-config", "agentgw.yaml"), env)


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_yaml_parses_into_mappings(path: Path) -> None:
    docs = documents(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)
    if path.parent == K8S and path.name != "kustomization.yaml":
        for doc in docs:
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = documents(K8S / "kustomization.yaml")
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    assert find("Namespace", NAMESPACE)


def test_config_and_policies_env_are_read() -> None:
    assert config_path(None, {"AGENTGW_CONFIG": "/etc/x/agentgw.yaml"}) == Path("/etc/x/agentgw.yaml")
    assert load_settings(None, {"AGENTGW_POLICIES": "/a:/b"}).policies == ["/a", "/b"]


def test_deployment_sets_only_env_the_gateway_reads(tmp_path: Path) -> None:
    container = gateway_container()
    secrets = policy_secret_envs([str(policies_dir(tmp_path))])
    assert secrets == {"AGENTGW_JWT_SECRET"}
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))
    assert set(names) <= GATEWAY_ENV | secrets | llm_key_envs(k8s_settings(tmp_path))
    # Every secret a policy names is given, from a Secret: without it the gateway refuses to start.
    by_name = {e["name"]: e for e in container["env"]}
    for secret in secrets:
        assert "secretKeyRef" in by_name[secret]["valueFrom"], secret


def test_configmap_config_validates_and_listens_on_the_container_ports(tmp_path: Path) -> None:
    container = gateway_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": HTTP_PORT, "metrics": METRICS_PORT}
    # The file alone says the same as the env, so dropping either still leaves the pod reachable.
    file_only = load_settings(configmap_file(tmp_path, "agentgw-config", "agentgw.yaml"), {})
    for settings in (k8s_settings(tmp_path), file_only):
        assert split_host_port(settings.server.listen) == ("0.0.0.0", HTTP_PORT)
        assert split_host_port(settings.server.metrics_listen) == ("0.0.0.0", METRICS_PORT)
    settings = k8s_settings(tmp_path)
    assert settings.session_store.type == "redis"
    assert settings.server.workers == 1
    assert settings.mcp.enabled and settings.mcp.tool_validation


def test_deployment_mounts_the_config_and_policies_it_names() -> None:
    deployment = find("Deployment", "agentgw")
    container = gateway_container()
    env = plain_env(container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_dir, config_key = env["AGENTGW_CONFIG"].rsplit("/", 1)
    (config_volume,) = [name for name, path in mounts.items() if path == config_dir]
    assert config_key in find("ConfigMap", volumes[config_volume]["configMap"]["name"])["data"]
    (policies_volume,) = [name for name, path in mounts.items() if path == env["AGENTGW_POLICIES"].rstrip("/")]
    assert volumes[policies_volume]["configMap"]["name"] == "agentgw-policies"


def test_pod_reaches_redis_and_targets_through_services_in_the_manifests(tmp_path: Path) -> None:
    settings = k8s_settings(tmp_path)
    urls = [settings.session_store.url] + [b.url for t in settings.mcp.targets for b in t.backends]
    for url in urls:
        parts = urlsplit(url)
        service = find("Service", str(parts.hostname))
        assert parts.port in [p["port"] for p in service["spec"]["ports"]], url


def test_deployment_runs_three_hardened_replicas() -> None:
    deployment = find("Deployment", "agentgw")
    assert deployment["spec"]["replicas"] == 3
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels())
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}


def test_dockerfile_user_and_ports_match_the_pod() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    user = re.search(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert user is not None and user.group(1).isdigit(), "runAsNonRoot needs a numeric USER"
    pod = find("Deployment", "agentgw")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user.group(1))
    assert re.search(rf"^EXPOSE {HTTP_PORT} {METRICS_PORT}$", dockerfile, re.MULTILINE)
    assert "examples/mcp_server.py" in dockerfile  # compose and example-mcp-server.yaml run it from the image


def test_probes_use_health_paths_on_the_main_port() -> None:
    container = gateway_container()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert container_port(container, get["port"]) == HTTP_PORT


async def call(app: Any, path: str, host: str) -> tuple[int, bytes]:
    """One GET through the ASGI app, as the kubelet sends it (Host is the pod IP and port)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", host.encode()), (b"user-agent", b"kube-probe/1.32")],
        "client": ("10.0.0.1", 40000),
        "server": ("10.0.0.7", HTTP_PORT),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_gateway_answers_the_probes_without_a_token(tmp_path: Path) -> None:
    # The memory store keeps the test off the network; the routes are the same with Redis.
    policies = str(policies_dir(tmp_path))
    settings = k8s_settings(tmp_path, SESSION_STORE_TYPE="memory", AGENTGW_POLICIES=policies)
    app = create_app(settings, env={"AGENTGW_JWT_SECRET": "test-secret"})
    host = f"10.0.0.7:{HTTP_PORT}"
    assert (await call(app, "/healthz", host))[0] == 200
    status, body = await call(app, "/ready", host)
    assert status in (200, 503)
    assert json.loads(body)["status"] in ("ready", "not ready")
    assert (await call(app, "/no-such-path", host))[0] == 404
    assert (await call(app, MCP_PREFIX, host))[0] == 401  # the mounted policies do demand a token


def test_service_exposes_both_ports_of_the_gateway_pods() -> None:
    service = find("Service", "agentgw")
    container = gateway_container()
    assert selects(service["spec"]["selector"], pod_labels())
    ports = {p["port"]: container_port(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {HTTP_PORT: HTTP_PORT, METRICS_PORT: METRICS_PORT}


def test_disruption_budget_covers_the_gateway_and_leaves_two_up() -> None:
    budget = find("PodDisruptionBudget", "agentgw")["spec"]
    assert selects(budget["selector"]["matchLabels"], pod_labels())
    replicas = find("Deployment", "agentgw")["spec"]["replicas"]
    if "maxUnavailable" in budget:
        assert budget["maxUnavailable"] == 1
    else:
        assert 2 <= budget["minAvailable"] < replicas


def ingress_rules_for_gateway_pods() -> list[dict[str, Any]]:
    policies = [
        m
        for m in manifests()
        if m["kind"] == "NetworkPolicy" and selects(m["spec"]["podSelector"].get("matchLabels", {}), pod_labels())
    ]
    assert policies and all("Ingress" in p["spec"]["policyTypes"] for p in policies)
    return [rule for p in policies for rule in p["spec"].get("ingress", [])]


def test_network_policy_admits_metrics_only_from_prometheus() -> None:
    rules = ingress_rules_for_gateway_pods()
    # A rule without ports, or without peers, would open 9090 to more than Prometheus.
    assert all(rule.get("ports") and rule.get("from") for rule in rules)
    metrics_rules = [r for r in rules if METRICS_PORT in [p["port"] for p in r["ports"]]]
    assert metrics_rules
    for rule in metrics_rules:
        assert [p["port"] for p in rule["ports"]] == [METRICS_PORT]
        for peer in rule["from"]:
            # Both selectors in one peer: a Prometheus pod AND in the monitoring namespace, not either.
            assert set(peer) == {"namespaceSelector", "podSelector"}
            assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
            assert peer["namespaceSelector"]["matchLabels"]


def test_network_policy_admits_the_main_port_from_the_tier1_gateway() -> None:
    tier1 = {ref["namespace"] for m in manifests() if m["kind"] == "HTTPRoute" for ref in m["spec"]["parentRefs"]}
    assert tier1 == {"ai-gateway"}
    main_rules = [r for r in ingress_rules_for_gateway_pods() if HTTP_PORT in [p["port"] for p in r["ports"]]]
    assert main_rules
    for rule in main_rules:
        assert [p["port"] for p in rule["ports"]] == [HTTP_PORT]
        for peer in rule["from"]:
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ai-gateway"}


def test_http_routes_send_every_protocol_prefix_to_the_main_port() -> None:
    routes = [m for m in manifests() if m["kind"] == "HTTPRoute"]
    assert routes and all(r["apiVersion"] == "gateway.networking.k8s.io/v1" for r in routes)
    service = find("Service", "agentgw")
    main_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    assert main_port == HTTP_PORT
    prefixes = set()
    for route in routes:
        for ref in route["spec"]["parentRefs"]:
            assert (ref.get("kind", "Gateway"), ref["name"]) == ("Gateway", "ai-inference-gateway")
        for rule in route["spec"]["rules"]:
            for match in rule["matches"]:
                assert match["path"]["type"] == "PathPrefix"
                prefixes.add(match["path"]["value"])
            for backend in rule["backendRefs"]:
                assert (backend["name"], backend["port"]) == ("agentgw", main_port)
                assert backend.get("namespace", route["metadata"]["namespace"]) == service["metadata"]["namespace"]
    chat = {"/v1/chat/completions", "/v1/models"}
    assert all(p.startswith(CHAT_PREFIX) for p in chat)
    assert prefixes == {MCP_PREFIX, A2A_PREFIX, WELL_KNOWN_METADATA} | chat


def test_policies_configmap_is_the_repository_policies_and_loads(tmp_path: Path) -> None:
    repo = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "policies").glob("*.yaml"))}
    assert find("ConfigMap", "agentgw-policies")["data"] == repo
    policies = load_policies([str(policies_dir(tmp_path))])
    assert len(policies.sources) == len(repo)
    assert policies.auth and policies.tools


def compose_services() -> dict[str, dict[str, Any]]:
    (compose,) = documents(DEPLOY / "compose.yaml")
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def compose_gateways() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose_services().items() if "AGENTGW_CONFIG" in s.get("environment", {})}


def compose_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each bind mount (compose resolves host paths from deploy/)."""
    mounts = {}
    for volume in service["volumes"]:
        host, container, *_ = volume.split(":")
        mounts[container] = (DEPLOY / host).resolve()
    return mounts


def test_compose_runs_two_gateways_on_one_redis() -> None:
    services = compose_services()
    gateways = compose_gateways()
    assert len(gateways) == 2
    assert len({g["image"] for g in gateways.values()}) == 1
    redis_urls = {g["environment"]["REDIS_URL"] for g in gateways.values()}
    assert len(redis_urls) == 1
    redis_host = urlsplit(redis_urls.pop()).hostname
    assert str(services[str(redis_host)]["image"]).startswith("redis:")
    for gateway in gateways.values():
        assert gateway["environment"]["SESSION_STORE_TYPE"] == "redis"
        published = {int(p.rsplit(":", 1)[1]): p for p in gateway["ports"]}
        assert set(published) == {HTTP_PORT, METRICS_PORT}
        assert published[METRICS_PORT].startswith("127.0.0.1:"), "the admin API stays off the network"


def test_compose_sets_only_env_the_gateway_reads() -> None:
    secrets = policy_secret_envs([str(ROOT / "policies")])
    for gateway in compose_gateways().values():
        names = set(gateway["environment"])
        assert names <= GATEWAY_ENV | secrets
        assert secrets <= names


def test_compose_config_validates_and_reaches_compose_services() -> None:
    services = compose_services()
    for gateway in compose_gateways().values():
        env = {k: str(v) for k, v in gateway["environment"].items()}
        mounts = compose_mounts(gateway)
        assert mounts[env["AGENTGW_CONFIG"]] == DEPLOY / "agentgw.yaml"
        assert mounts[env["AGENTGW_POLICIES"]] == ROOT / "policies"
        settings = load_settings(mounts[env["AGENTGW_CONFIG"]], env)
        assert split_host_port(settings.server.listen) == ("0.0.0.0", HTTP_PORT)
        assert split_host_port(settings.server.metrics_listen) == ("0.0.0.0", METRICS_PORT)
        for backend in (b for t in settings.mcp.targets for b in t.backends):
            parts = urlsplit(backend.url)
            server = services[str(parts.hostname)]
            args = server["command"]
            assert server["entrypoint"][-1] == "examples/mcp_server.py"
            assert args[args.index("--port") + 1] == str(parts.port)
            assert args[args.index("--host") + 1] == "0.0.0.0"  # it binds loopback by default
