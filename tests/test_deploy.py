"""deploy/ stays true to the gateway: env names it reads, ports it listens on, paths it serves, policies it loads.

No docker, no kubectl: the manifests are parsed, and the configs and policies they
carry are loaded with the gateway's own loaders.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from agentgw.app import CHAT_PREFIX, MCP_PREFIX, create_app

# AGENTGW_CONFIG and AGENTGW_POLICIES are read outside the override table, and
# test_config_and_policies_env_are_read proves that they are; the trusted-proxy
# variable is proven in tests/auth/test_jwt.py.
from agentgw.cli import TRUSTED_PROXIES_ENV, _parser
from agentgw.config import ENV_OVERRIDES, Settings, config_path, load_settings, split_host_port
from agentgw.errors import WELL_KNOWN_METADATA
from agentgw.inbound.a2a import A2A_PREFIX
from agentgw.policy.engine import PolicyEngine
from agentgw.policy.loader import load_policies
from tests import support
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
GATEWAY_ENV = frozenset(ENV_OVERRIDES) | {"AGENTGW_CONFIG", "AGENTGW_POLICIES", TRUSTED_PROXIES_ENV}
NAMESPACE = "ai-inference"
HTTP_PORT, METRICS_PORT = 8080, 9090
BRIDGE_PATH = "/mcp"  # where `agentgw bridge` serves (contract 13)
STDIO_EXAMPLE = ["python", "examples/stdio_server.py"]


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


def workloads() -> list[dict[str, Any]]:
    return [m for m in manifests() if m["kind"] in ("Deployment", "StatefulSet")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def workload_behind(service: dict[str, Any]) -> dict[str, Any]:
    selector = service["spec"]["selector"]
    (workload,) = [w for w in workloads() if selects(selector, w["spec"]["template"]["metadata"]["labels"])]
    return workload


def service_of_host(host: str) -> dict[str, Any]:
    """The Service a pod reaches `host` through: the Service `host`, or for a StatefulSet pod's own
    name (`pod.service`) the headless Service of that StatefulSet, which must have that pod."""
    pod, _, name = host.rpartition(".")
    service = find("Service", name)
    if pod:
        assert service["spec"].get("clusterIP") == "None", f"{name} must be headless to name its pods"
        sets = [w for w in workloads() if w["kind"] == "StatefulSet" and w["spec"]["serviceName"] == name]
        pods = {f"{s['metadata']['name']}-{n}" for s in sets for n in range(s["spec"]["replicas"])}
        assert pod in pods, host
    return service


def k8s_argv(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def bridge_options(argv: list[str]) -> argparse.Namespace:
    """An `agentgw bridge` command line as the CLI parses it: an option it lacks fails here, not in a pod."""
    assert argv[0] == "agentgw"
    options = _parser().parse_args(argv[1:])
    assert options.command == "bridge"
    return options


def mcp_server_listen(argv: list[str]) -> tuple[str, int]:
    """Where the MCP server that `argv` starts listens: `agentgw bridge` or the example HTTP server."""
    if argv[0] == "agentgw":
        return split_host_port(bridge_options(argv).listen)
    assert argv[:2] == ["python", "examples/mcp_server.py"]
    return argv[argv.index("--host") + 1], int(argv[argv.index("--port") + 1])


def backend_urls(settings: Settings, target: str) -> list[str]:
    (found,) = [t for t in settings.mcp.targets if t.name == target]
    return [b.url for b in found.backends]


def notes_tools(settings: Settings) -> list[str]:
    """The tools of `notes` that the virtual server `workspace` exposes."""
    workspace = settings.virtual_server("workspace")
    assert workspace is not None
    (notes,) = [m for m in workspace.members if m.target == "notes"]
    assert notes.tools is not None
    return notes.tools


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
        service = service_of_host(str(parts.hostname))
        assert parts.port in [p["port"] for p in service["spec"]["ports"]], url


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text(encoding="utf-8")


def dockerfile_user() -> int:
    user = re.search(r"^USER (\S+)$", dockerfile(), re.MULTILINE)
    assert user is not None and user.group(1).isdigit(), "runAsNonRoot needs a numeric USER"
    return int(user.group(1))


def test_deployment_runs_three_replicas() -> None:
    deployment = find("Deployment", "agentgw")
    assert deployment["spec"]["replicas"] == 3
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels())


def test_every_pod_of_the_image_is_hardened() -> None:
    of_image = [w for w in workloads() if any(c["image"].startswith("agentgw:") for c in pod_spec(w)["containers"])]
    assert {w["metadata"]["name"] for w in of_image} == {"agentgw", "docs-mcp", "notes-mcp"}
    for workload in of_image:
        name, pod = workload["metadata"]["name"], pod_spec(workload)
        assert selects(workload["spec"]["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"])
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == dockerfile_user(), name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            # The only writable place on the read-only root.
            (tmp,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp], name
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, name


def test_dockerfile_exposes_the_gateway_ports() -> None:
    assert re.search(rf"^EXPOSE {HTTP_PORT} {METRICS_PORT}$", dockerfile(), re.MULTILINE)


def test_image_carries_every_example_that_compose_and_the_pods_run() -> None:
    argvs = [k8s_argv(c) for w in workloads() for c in pod_spec(w)["containers"]]
    argvs += [compose_argv(service) for service in compose_services().values()]
    scripts = {arg for argv in argvs for arg in argv if arg.startswith("examples/")}
    assert scripts == {"examples/mcp_server.py", "examples/stdio_server.py"}
    workdir = re.findall(r"^WORKDIR (\S+)$", dockerfile(), re.MULTILINE)
    assert workdir == ["/app"]  # relative script paths resolve from here
    copied: dict[str, str] = {}
    for line in re.findall(r"^COPY (.+)$", dockerfile(), re.MULTILINE):
        *sources, destination = line.split()
        copied |= dict.fromkeys(sources, destination)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    kept = {line[1:] for line in ignore if line.startswith("!")}
    for script in scripts:
        assert (ROOT / script).is_file(), script
        assert script in kept, f"{script} is left out of the build context"
        assert copied[script].lstrip("./") in ("examples/", script), copied[script]


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


def test_network_policy_admits_each_mcp_server_from_gateway_pods_only(tmp_path: Path) -> None:
    for url in {b.url for t in k8s_settings(tmp_path).mcp.targets for b in t.backends}:
        parts = urlsplit(url)
        service = service_of_host(str(parts.hostname))
        workload = workload_behind(service)
        (container,) = pod_spec(workload)["containers"]
        (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
        port = container_port(container, service_port["targetPort"])
        labels = workload["spec"]["template"]["metadata"]["labels"]
        rules = [
            rule
            for m in manifests()
            if m["kind"] == "NetworkPolicy" and selects(m["spec"]["podSelector"].get("matchLabels", {}), labels)
            for rule in m["spec"].get("ingress", [])
        ]
        assert rules, url
        for rule in rules:
            assert [p["port"] for p in rule["ports"]] == [port], url
            assert rule["from"] and all(set(peer) == {"podSelector"} for peer in rule["from"]), url
            assert all(selects(peer["podSelector"]["matchLabels"], pod_labels()) for peer in rule["from"]), url


def test_every_bridge_pod_is_one_backend_of_the_notes_target(tmp_path: Path) -> None:
    """A gateway session is pinned to one URL and holds a child in one bridge pod: each pod needs a
    URL of its own, which a StatefulSet's pods get through its headless Service."""
    statefulset = find("StatefulSet", "notes-mcp")
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    assert replicas == 2
    service = service_of_host(f"{name}-0.{statefulset['spec']['serviceName']}")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert selects(statefulset["spec"]["selector"]["matchLabels"], labels)
    assert selects(service["spec"]["selector"], labels)
    (container,) = pod_spec(statefulset)["containers"]
    options = bridge_options(k8s_argv(container))
    assert options.server_command == STDIO_EXAMPLE
    host, port = split_host_port(options.listen)
    assert host == "0.0.0.0"
    assert container_port(container, "mcp") == port
    assert container_port(container, container["readinessProbe"]["tcpSocket"]["port"]) == port
    assert [(p["port"], container_port(container, p["targetPort"])) for p in service["spec"]["ports"]] == [(port, port)]
    service_name = service["metadata"]["name"]
    expected = [f"http://{name}-{n}.{service_name}:{port}{BRIDGE_PATH}" for n in range(replicas)]
    assert backend_urls(k8s_settings(tmp_path), "notes") == expected
    # The bridge keeps a session's child at least as long as the gateway keeps the session.
    assert options.idle_timeout >= load_policies([str(policies_dir(tmp_path))]).session.session_timeout


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


def compose_argv(service: dict[str, Any]) -> list[str]:
    return [*service.get("entrypoint", []), *service.get("command", [])]


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
            assert parts.hostname in gateway["depends_on"], backend.url
            argv = compose_argv(services[str(parts.hostname)])
            # Both bind loopback unless told otherwise.
            assert mcp_server_listen(argv) == ("0.0.0.0", parts.port), backend.url
            if argv[0] == "agentgw":
                assert parts.path == BRIDGE_PATH


def test_compose_runs_the_stdio_example_behind_the_bridge_from_the_gateway_image() -> None:
    services = compose_services()
    (url,) = backend_urls(load_settings(DEPLOY / "agentgw.yaml", {}), "notes")
    bridge = services[str(urlsplit(url).hostname)]
    assert bridge_options(compose_argv(bridge)).server_command == STDIO_EXAMPLE
    assert {bridge["image"]} == {g["image"] for g in compose_gateways().values()}
    assert bridge["read_only"] is True and bridge["tmpfs"] == ["/tmp"]
    assert "ports" not in bridge  # reached through the gateways only


def test_workspace_joins_docs_and_the_notes_tools_the_policies_allow(tmp_path: Path) -> None:
    # Each config with the policies its gateways mount: the ConfigMap's, the repository's.
    deployed = (
        (k8s_settings(tmp_path), policies_dir(tmp_path)),
        (load_settings(DEPLOY / "agentgw.yaml", {}), ROOT / "policies"),
    )
    for settings, policies in deployed:
        engine = PolicyEngine(load_policies([str(policies)]).tools)
        workspace = settings.virtual_server("workspace")
        assert workspace is not None
        docs, notes = workspace.members
        assert (docs.target, docs.prefix, docs.tools) == ("docs", None, None)
        assert notes.target == "notes"
        assert notes_tools(settings) == ["echo", "slow_progress"]
        for tool in notes_tools(settings):
            assert engine.decide("notes", "tool", tool, frozenset()).allowed, tool


def runnable_here(argv: list[str]) -> list[str]:
    """An `agentgw bridge` command line of the manifests as this machine runs it: this interpreter
    for `agentgw` and for `python`, on loopback, on a port the kernel picks."""
    listen = argv.index("--listen") + 1
    server = argv.index("--") + 1
    assert argv[0] == "agentgw" and argv[server] == "python"
    local = [sys.executable, "-m", "agentgw", *argv[1:listen], "127.0.0.1:0", *argv[listen + 1 : server]]
    return [*local, sys.executable, *argv[server + 1 :]]


@pytest.mark.parametrize("where", ["compose", "k8s"])
async def test_the_bridge_as_deployed_serves_the_notes_tools(where: str, tmp_path: Path) -> None:
    if where == "compose":
        settings = load_settings(DEPLOY / "agentgw.yaml", {})
        argv = compose_argv(compose_services()[str(urlsplit(backend_urls(settings, "notes")[0]).hostname)])
    else:
        settings = k8s_settings(tmp_path)
        (container,) = pod_spec(find("StatefulSet", "notes-mcp"))["containers"]
        argv = k8s_argv(container)
    bridge = support.Process(runnable_here(argv), log=tmp_path / "bridge.log").start()
    try:
        session = await support.raw_session(bridge.port, BRIDGE_PATH)
        headers = support.mcp_headers(bridge.port, ("Mcp-Session-Id", session), ("MCP-Protocol-Version", "2025-11-25"))
        tools_list = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
        listed = await support.raw_request(bridge.port, "POST", BRIDGE_PATH, headers, tools_list)
        assert set(notes_tools(settings)) <= {tool["name"] for tool in listed.message()["result"]["tools"]}
        echoed = await support.raw_call(bridge.port, session, "echo", {"text": "via the bridge"}, BRIDGE_PATH)
        assert support.tool_text(echoed) == "via the bridge"
    finally:
        bridge.stop()
