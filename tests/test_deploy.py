"""deploy/ stays true to the gateway: env names it reads, ports it listens on, paths it serves, policies it loads.

No docker, no kubectl: the manifests are parsed (the kustomizations rendered, the compose
files merged, as those tools do for what these files use), and the configs and policies
they carry are loaded with the gateway's own loaders. The Redis and sentinel start scripts
run under sh, as their pods run them, with a stand-in redis-server that records its
command line.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
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
from agentgw.config import (
    ENV_OVERRIDES,
    SessionStoreConfig,
    Settings,
    config_path,
    load_settings,
    split_host_port,
)
from agentgw.errors import WELL_KNOWN_METADATA
from agentgw.inbound.a2a import A2A_PREFIX
from agentgw.policy.engine import PolicyEngine
from agentgw.policy.loader import load_policies
from tests import support
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_SENTINEL = DEPLOY / "k8s-sentinel"  # an overlay of K8S; kustomize refuses one inside its base
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_SENTINEL = DEPLOY / "compose.sentinel.yaml"  # added on top of COMPOSE
GATEWAY_ENV = frozenset(ENV_OVERRIDES) | {"AGENTGW_CONFIG", "AGENTGW_POLICIES", TRUSTED_PROXIES_ENV}
NAMESPACE = "ai-inference"
HTTP_PORT, METRICS_PORT = 8080, 9090
REDIS_PORT = 6379  # redis-server's default, where no --port says otherwise
BRIDGE_PATH = "/mcp"  # where `agentgw bridge` serves (contract 13)
STDIO_EXAMPLE = ["python", "examples/stdio_server.py"]
SCRIPT_TIMEOUT = 10.0


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


# What the kustomizations use. Anything else would be rendered wrongly here, so it fails instead.
# `images` is left unapplied: it retags the agentgw image, which no check here depends on.
KUSTOMIZATION_KEYS = frozenset({"apiVersion", "kind", "resources", "patches", "images"})
# The lists the patches reach into, by the field Kubernetes merges their items on (patchMergeKey);
# any other list in a patch replaces the one it patches.
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """A strategic-merge patch applied as kustomize applies it, for the fields of MERGE_KEYS."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return base | {
            key: strategic_merge(base[key], value, key) if key in base else value for key, value in patch.items()
        }
    if field not in MERGE_KEYS:
        return patch
    key = MERGE_KEYS[field]
    merged = {item[key]: item for item in base}
    for item in patch:
        if item.get("$patch") == "delete":
            del merged[item[key]]  # a KeyError: the patch deletes what is not there
        else:
            merged[item[key]] = strategic_merge(merged[item[key]], item) if item[key] in merged else item
    return list(merged.values())


def identity(manifest: dict[str, Any]) -> tuple[str, str, str]:
    return manifest["kind"], manifest["metadata"].get("namespace", ""), manifest["metadata"]["name"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe or Service port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in container["ports"] if p.get("name") == port)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_template_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def pod_names(statefulset: dict[str, Any]) -> list[str]:
    """The names of a StatefulSet's pods, each its hostname; `name.serviceName` reaches it."""
    return [f"{statefulset['metadata']['name']}-{n}" for n in range(statefulset["spec"]["replicas"])]


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container["env"] if "value" in e}


def rule_admits(rule: dict[str, Any], source: dict[str, str], port: int) -> bool:
    """Whether one ingress rule lets pods labelled `source`, in the same namespace, reach `port`."""
    ports = "ports" not in rule or port in [p["port"] for p in rule["ports"]]
    peers = "from" not in rule or any(
        set(peer) == {"podSelector"} and selects(peer["podSelector"]["matchLabels"], source) for peer in rule["from"]
    )
    return ports and peers


@dataclass(frozen=True)
class Kustomized:
    """The objects `kubectl kustomize FOLDER` renders, and the lookups the tests make in them."""

    folder: Path
    objects: tuple[dict[str, Any], ...]

    def find(self, kind: str, name: str) -> dict[str, Any]:
        found = [m for m in self.objects if m["kind"] == kind and m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.objects if m["kind"] == kind]

    def workloads(self) -> list[dict[str, Any]]:
        return [m for m in self.objects if m["kind"] in ("Deployment", "StatefulSet")]

    def gateway_container(self) -> dict[str, Any]:
        containers = pod_spec(self.find("Deployment", "agentgw"))["containers"]
        return next(c for c in containers if c["name"] == "agentgw")

    def pod_labels(self) -> dict[str, str]:
        """The labels of the gateway pods."""
        return pod_template_labels(self.find("Deployment", "agentgw"))

    def workload_behind(self, service: dict[str, Any]) -> dict[str, Any]:
        selector = service["spec"]["selector"]
        (workload,) = [w for w in self.workloads() if selects(selector, pod_template_labels(w))]
        return workload

    def service_of_host(self, host: str) -> dict[str, Any]:
        """The Service a pod reaches `host` through: the Service `host`, or for a StatefulSet pod's own
        name (`pod.service`) the headless Service of that StatefulSet, which must have that pod."""
        pod, _, name = host.rpartition(".")
        service = self.find("Service", name)
        if pod:
            assert service["spec"].get("clusterIP") == "None", f"{name} must be headless to name its pods"
            sets = [w for w in self.of_kind("StatefulSet") if w["spec"]["serviceName"] == name]
            assert pod in {p for s in sets for p in pod_names(s)}, host
        return service

    def pod_port(self, host: str, port: int) -> tuple[dict[str, Any], int]:
        """The workload behind `host` and the container port that `host:port` reaches in its pods."""
        service = self.service_of_host(host)
        workload = self.workload_behind(service)
        (container,) = pod_spec(workload)["containers"]
        (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
        return workload, container_port(container, service_port["targetPort"])

    def ingress_rules(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """The ingress rules of the NetworkPolicies that select pods labelled `labels` (there must be one)."""
        policies = [
            p for p in self.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)
        ]
        assert policies and all("Ingress" in p["spec"]["policyTypes"] for p in policies), labels
        return [rule for p in policies for rule in p["spec"].get("ingress", [])]

    def admits(self, source: dict[str, str], target: dict[str, str], port: int) -> bool:
        return any(rule_admits(rule, source, port) for rule in self.ingress_rules(target))

    def configmap_file(self, tmp: Path, configmap: str, key: str) -> Path:
        path = tmp / key
        path.write_text(self.find("ConfigMap", configmap)["data"][key], encoding="utf-8")
        return path

    def policies_dir(self, tmp: Path) -> Path:
        folder = tmp / "policies"
        folder.mkdir(exist_ok=True)
        for name, text in self.find("ConfigMap", "agentgw-policies")["data"].items():
            (folder / name).write_text(text, encoding="utf-8")
        return folder

    def settings(self, tmp: Path, **overrides: str) -> Settings:
        """The Deployment's config as the pod loads it: the ConfigMap's agentgw.yaml plus the container env."""
        env = {**plain_env(self.gateway_container()), **overrides}
        return load_settings(self.configmap_file(tmp, "agentgw-config", "agentgw.yaml"), env)


@functools.cache
def kustomize(folder: Path) -> Kustomized:
    """`kubectl kustomize folder` for what deploy/ uses: resources (files, and folders holding a
    kustomization) and strategic-merge patches, each naming the object it patches."""
    (kustomization,) = documents(folder / "kustomization.yaml")
    assert set(kustomization) <= KUSTOMIZATION_KEYS, folder
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (folder / resource).resolve()
        objects += kustomize(path).objects if path.is_dir() else documents(path)
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, entry
        for patch in documents(folder / entry["path"]):
            (index,) = [i for i, m in enumerate(objects) if identity(m) == identity(patch)]
            objects[index] = strategic_merge(objects[index], patch)
    return Kustomized(folder, tuple(objects))


@pytest.fixture(params=[K8S, K8S_SENTINEL], ids=lambda folder: folder.name)
def k8s(request: pytest.FixtureRequest) -> Kustomized:
    """Each Kubernetes variant: what the base tests check holds for the overlay too."""
    return kustomize(request.param)


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


def policy_secret_envs(paths: list[str]) -> set[str]:
    policies = load_policies(paths)
    return {a.spec.jwt_validation.secret_env for a in policies.auth if a.spec.jwt_validation.secret_env}


def llm_key_envs(settings: Settings) -> set[str]:
    return {p.api_key_env for p in settings.llm.providers if p.api_key_env}


def store_secret_envs(settings: Settings) -> set[str]:
    return {settings.session_store.password_env} if settings.session_store.password_env else set()


def store_addresses(store: SessionStoreConfig) -> list[tuple[str, int]]:
    """The servers the gateway connects to first: the one Redis, or the sentinels or cluster nodes."""
    if store.type == "redis":
        parts = urlsplit(store.url)
        return [(str(parts.hostname), parts.port or REDIS_PORT)]
    return store.addresses()


@dataclass(frozen=True)
class StartedRedis:
    """What a Redis or sentinel container's command hands to redis-server as it starts."""

    argv: list[str]  # what follows `redis-server`, with paths as the container sees them
    volume: Path  # the container's data volume, here

    def options(self) -> dict[str, str]:
        """The `--name value` options (`--sentinel`: "")."""
        found: dict[str, str] = {}
        for index, arg in enumerate(self.argv):
            if arg.startswith("--"):
                following = self.argv[index + 1 : index + 2]
                found[arg[2:]] = following[0] if following and not following[0].startswith("--") else ""
        return found

    def config(self, mount: str) -> list[list[str]]:
        """The lines of the config file it starts from (none without one), as redis-server splits them."""
        if not self.argv or self.argv[0].startswith("--"):
            return []
        path = self.volume / Path(self.argv[0]).relative_to(mount)
        lines = path.read_text(encoding="utf-8").splitlines()
        return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def config_value(lines: list[list[str]], *directive: str) -> list[str] | None:
    """The arguments of the one line of a Redis config that starts with `directive`, or None."""
    found = [line[len(directive) :] for line in lines if tuple(line[: len(directive)]) == directive]
    assert len(found) <= 1, directive
    return found[0] if found else None


# The redis-server the start scripts find on their PATH: it writes down its arguments and exits.
STAND_IN_REDIS = (
    "import json, os, sys\nwith open(os.environ['REDIS_ARGV'], 'w') as f:\n    json.dump(sys.argv[1:], f)\n"
)


def start_redis(argv: list[str], hostname: str, mount: str, volume: Path) -> StartedRedis:
    """Start a Redis container's command line as its pod or container named `hostname` would, with
    its data volume (mounted at `mount`) at `volume`: a `sh -c` start script runs for real, with a
    stand-in redis-server on its PATH that records the arguments it gets."""
    if argv[0] == "redis-server":
        return StartedRedis(argv[1:], volume)
    assert argv[:2] == ["sh", "-c"], argv
    volume.mkdir(parents=True, exist_ok=True)
    stand_in = volume.parent / "bin" / "redis-server"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text(f"#!{sys.executable}\n{STAND_IN_REDIS}", encoding="utf-8")
    stand_in.chmod(0o755)
    record = volume.parent / f"{hostname}.argv.json"
    script = argv[2].replace(f"{mount}/", f"{volume}/")
    env = {"HOSTNAME": hostname, "PATH": f"{stand_in.parent}:/usr/bin:/bin", "REDIS_ARGV": str(record)}
    subprocess.run([*argv[:2], script, *argv[3:]], env=env, check=True, timeout=SCRIPT_TIMEOUT)
    recorded: list[str] = json.loads(record.read_text(encoding="utf-8"))
    return StartedRedis([arg.replace(f"{volume}/", f"{mount}/") for arg in recorded], volume)


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_yaml_parses_into_mappings(path: Path) -> None:
    docs = documents(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)
    if path.parent in (K8S, K8S_SENTINEL) and path.name != "kustomization.yaml":
        for doc in docs:
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_kustomization_lists_every_manifest(k8s: Kustomized) -> None:
    (kustomization,) = documents(k8s.folder / "kustomization.yaml")
    files = [r for r in kustomization["resources"] if not (k8s.folder / r).is_dir()]
    files += [patch["path"] for patch in kustomization.get("patches", [])]
    on_disk = {p.name for p in k8s.folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(files) == sorted(on_disk)
    assert k8s.find("Namespace", NAMESPACE)


def test_sentinel_overlay_builds_on_the_whole_base() -> None:
    (kustomization,) = documents(K8S_SENTINEL / "kustomization.yaml")
    bases = [(K8S_SENTINEL / r).resolve() for r in kustomization["resources"] if (K8S_SENTINEL / r).is_dir()]
    assert bases == [K8S]
    base = {identity(m) for m in kustomize(K8S).objects}
    assert base < {identity(m) for m in kustomize(K8S_SENTINEL).objects}


def test_config_and_policies_env_are_read() -> None:
    assert config_path(None, {"AGENTGW_CONFIG": "/etc/x/agentgw.yaml"}) == Path("/etc/x/agentgw.yaml")
    assert load_settings(None, {"AGENTGW_POLICIES": "/a:/b"}).policies == ["/a", "/b"]


def test_deployment_sets_only_env_the_gateway_reads(k8s: Kustomized, tmp_path: Path) -> None:
    container = k8s.gateway_container()
    secrets = policy_secret_envs([str(k8s.policies_dir(tmp_path))])
    assert secrets == {"AGENTGW_JWT_SECRET"}
    settings = k8s.settings(tmp_path)
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))
    assert set(names) <= GATEWAY_ENV | secrets | llm_key_envs(settings) | store_secret_envs(settings)
    # Every secret a policy names is given, from a Secret: without it the gateway refuses to start.
    by_name = {e["name"]: e for e in container["env"]}
    for secret in secrets:
        assert "secretKeyRef" in by_name[secret]["valueFrom"], secret


STORE_TYPES = {K8S: "redis", K8S_SENTINEL: "redis-sentinel"}


def test_configmap_config_validates_and_listens_on_the_container_ports(k8s: Kustomized, tmp_path: Path) -> None:
    container = k8s.gateway_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": HTTP_PORT, "metrics": METRICS_PORT}
    # The file alone says the same as the env, so dropping either still leaves the pod reachable.
    file_only = load_settings(k8s.configmap_file(tmp_path, "agentgw-config", "agentgw.yaml"), {})
    for settings in (k8s.settings(tmp_path), file_only):
        assert split_host_port(settings.server.listen) == ("0.0.0.0", HTTP_PORT)
        assert split_host_port(settings.server.metrics_listen) == ("0.0.0.0", METRICS_PORT)
    settings = k8s.settings(tmp_path)
    assert settings.session_store.type == STORE_TYPES[k8s.folder]
    assert settings.server.workers == 1
    assert settings.mcp.enabled and settings.mcp.tool_validation


def test_deployment_mounts_the_config_and_policies_it_names(k8s: Kustomized) -> None:
    deployment = k8s.find("Deployment", "agentgw")
    container = k8s.gateway_container()
    env = plain_env(container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    config_dir, config_key = env["AGENTGW_CONFIG"].rsplit("/", 1)
    (config_volume,) = [name for name, path in mounts.items() if path == config_dir]
    assert config_key in k8s.find("ConfigMap", volumes[config_volume]["configMap"]["name"])["data"]
    (policies_volume,) = [name for name, path in mounts.items() if path == env["AGENTGW_POLICIES"].rstrip("/")]
    assert volumes[policies_volume]["configMap"]["name"] == "agentgw-policies"


def test_pod_reaches_redis_and_targets_through_services_in_the_manifests(k8s: Kustomized, tmp_path: Path) -> None:
    settings = k8s.settings(tmp_path)
    addresses = store_addresses(settings.session_store)
    for url in (b.url for t in settings.mcp.targets for b in t.backends):
        parts = urlsplit(url)
        addresses.append((str(parts.hostname), int(str(parts.port))))
    for host, port in addresses:
        service = k8s.service_of_host(host)
        assert port in [p["port"] for p in service["spec"]["ports"]], (host, port)


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text(encoding="utf-8")


def dockerfile_user() -> int:
    user = re.search(r"^USER (\S+)$", dockerfile(), re.MULTILINE)
    assert user is not None and user.group(1).isdigit(), "runAsNonRoot needs a numeric USER"
    return int(user.group(1))


def test_deployment_runs_three_replicas(k8s: Kustomized) -> None:
    deployment = k8s.find("Deployment", "agentgw")
    assert deployment["spec"]["replicas"] == 3
    assert selects(deployment["spec"]["selector"]["matchLabels"], k8s.pod_labels())


def test_every_pod_is_hardened(k8s: Kustomized) -> None:
    for workload in k8s.workloads():
        name, pod = workload["metadata"]["name"], pod_spec(workload)
        assert selects(workload["spec"]["selector"]["matchLabels"], pod_template_labels(workload)), name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, name


def test_every_pod_of_the_image_runs_as_its_user_with_tmp_writable(k8s: Kustomized) -> None:
    of_image = [w for w in k8s.workloads() if any(c["image"].startswith("agentgw:") for c in pod_spec(w)["containers"])]
    assert {w["metadata"]["name"] for w in of_image} == {"agentgw", "docs-mcp", "notes-mcp"}
    for workload in of_image:
        name, pod = workload["metadata"]["name"], pod_spec(workload)
        assert pod["securityContext"]["runAsUser"] == dockerfile_user(), name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            # The only writable place on the read-only root.
            (tmp,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp], name


def test_dockerfile_exposes_the_gateway_ports() -> None:
    assert re.search(rf"^EXPOSE {HTTP_PORT} {METRICS_PORT}$", dockerfile(), re.MULTILINE)


def test_image_carries_every_example_that_compose_and_the_pods_run() -> None:
    workloads = [w for folder in (K8S, K8S_SENTINEL) for w in kustomize(folder).workloads()]
    argvs = [k8s_argv(c) for w in workloads for c in pod_spec(w)["containers"]]
    argvs += [compose_argv(s) for files in COMPOSE_VARIANTS for s in compose_services(*files).values()]
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


def test_probes_use_health_paths_on_the_main_port(k8s: Kustomized) -> None:
    container = k8s.gateway_container()
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


async def test_gateway_answers_the_probes_without_a_token(k8s: Kustomized, tmp_path: Path) -> None:
    # The memory store keeps the test off the network; the routes are the same with Redis.
    policies = str(k8s.policies_dir(tmp_path))
    settings = k8s.settings(tmp_path, SESSION_STORE_TYPE="memory", AGENTGW_POLICIES=policies)
    app = create_app(settings, env={"AGENTGW_JWT_SECRET": "test-secret"})
    host = f"10.0.0.7:{HTTP_PORT}"
    assert (await call(app, "/healthz", host))[0] == 200
    status, body = await call(app, "/ready", host)
    assert status in (200, 503)
    assert json.loads(body)["status"] in ("ready", "not ready")
    assert (await call(app, "/no-such-path", host))[0] == 404
    assert (await call(app, MCP_PREFIX, host))[0] == 401  # the mounted policies do demand a token


def test_service_exposes_both_ports_of_the_gateway_pods(k8s: Kustomized) -> None:
    service = k8s.find("Service", "agentgw")
    container = k8s.gateway_container()
    assert selects(service["spec"]["selector"], k8s.pod_labels())
    ports = {p["port"]: container_port(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {HTTP_PORT: HTTP_PORT, METRICS_PORT: METRICS_PORT}


def test_disruption_budget_covers_the_gateway_and_leaves_two_up(k8s: Kustomized) -> None:
    budget = k8s.find("PodDisruptionBudget", "agentgw")["spec"]
    assert selects(budget["selector"]["matchLabels"], k8s.pod_labels())
    replicas = k8s.find("Deployment", "agentgw")["spec"]["replicas"]
    if "maxUnavailable" in budget:
        assert budget["maxUnavailable"] == 1
    else:
        assert 2 <= budget["minAvailable"] < replicas


def test_network_policy_admits_metrics_only_from_prometheus(k8s: Kustomized) -> None:
    rules = k8s.ingress_rules(k8s.pod_labels())
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


def test_network_policy_admits_the_main_port_from_the_tier1_gateway(k8s: Kustomized) -> None:
    tier1 = {ref["namespace"] for m in k8s.of_kind("HTTPRoute") for ref in m["spec"]["parentRefs"]}
    assert tier1 == {"ai-gateway"}
    main_rules = [r for r in k8s.ingress_rules(k8s.pod_labels()) if HTTP_PORT in [p["port"] for p in r["ports"]]]
    assert main_rules
    for rule in main_rules:
        assert [p["port"] for p in rule["ports"]] == [HTTP_PORT]
        for peer in rule["from"]:
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ai-gateway"}


def test_network_policy_admits_each_mcp_server_from_gateway_pods_only(k8s: Kustomized, tmp_path: Path) -> None:
    for url in {b.url for t in k8s.settings(tmp_path).mcp.targets for b in t.backends}:
        parts = urlsplit(url)
        workload, port = k8s.pod_port(str(parts.hostname), int(str(parts.port)))
        rules = k8s.ingress_rules(pod_template_labels(workload))
        assert rules, url
        for rule in rules:
            assert [p["port"] for p in rule["ports"]] == [port], url
            assert rule["from"] and all(set(peer) == {"podSelector"} for peer in rule["from"]), url
            assert all(selects(peer["podSelector"]["matchLabels"], k8s.pod_labels()) for peer in rule["from"]), url


def test_network_policy_admits_the_gateway_to_its_store_and_the_store_to_itself(
    k8s: Kustomized, tmp_path: Path
) -> None:
    store = k8s.settings(tmp_path).session_store
    for host, port in store_addresses(store):
        workload, pod_port = k8s.pod_port(host, port)
        assert k8s.admits(k8s.pod_labels(), pod_template_labels(workload), pod_port), host
    if store.type == "redis-sentinel":
        redis, sentinel = k8s.find("StatefulSet", "redis"), k8s.find("StatefulSet", "redis-sentinel")
        (redis_container,) = pod_spec(redis)["containers"]
        (sentinel_container,) = pod_spec(sentinel)["containers"]
        redis_pods, sentinel_pods = pod_template_labels(redis), pod_template_labels(sentinel)
        redis_port = container_port(redis_container, "redis")
        assert k8s.admits(k8s.pod_labels(), redis_pods, redis_port)  # the master the sentinels name
        assert k8s.admits(redis_pods, redis_pods, redis_port)  # the replica copies from the master
        assert k8s.admits(sentinel_pods, redis_pods, redis_port)  # the sentinels watch and reconfigure
        assert k8s.admits(sentinel_pods, sentinel_pods, container_port(sentinel_container, "sentinel"))


def test_every_bridge_pod_is_one_backend_of_the_notes_target(k8s: Kustomized, tmp_path: Path) -> None:
    """A gateway session is pinned to one URL and holds a child in one bridge pod: each pod needs a
    URL of its own, which a StatefulSet's pods get through its headless Service."""
    statefulset = k8s.find("StatefulSet", "notes-mcp")
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 2
    service = k8s.service_of_host(f"{pod_names(statefulset)[0]}.{statefulset['spec']['serviceName']}")
    labels = pod_template_labels(statefulset)
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
    expected = [f"http://{pod}.{service_name}:{port}{BRIDGE_PATH}" for pod in pod_names(statefulset)]
    assert backend_urls(k8s.settings(tmp_path), "notes") == expected
    # The bridge keeps a session's child at least as long as the gateway keeps the session.
    assert options.idle_timeout >= load_policies([str(k8s.policies_dir(tmp_path))]).session.session_timeout


def test_http_routes_send_every_protocol_prefix_to_the_main_port(k8s: Kustomized) -> None:
    routes = k8s.of_kind("HTTPRoute")
    assert routes and all(r["apiVersion"] == "gateway.networking.k8s.io/v1" for r in routes)
    service = k8s.find("Service", "agentgw")
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


def test_policies_configmap_is_the_repository_policies_and_loads(k8s: Kustomized, tmp_path: Path) -> None:
    repo = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "policies").glob("*.yaml"))}
    assert k8s.find("ConfigMap", "agentgw-policies")["data"] == repo
    policies = load_policies([str(k8s.policies_dir(tmp_path))])
    assert len(policies.sources) == len(repo)
    assert policies.auth and policies.tools


def claimed_mount(statefulset: dict[str, Any]) -> str:
    """Where the one container of `statefulset` mounts its volume claim: data that outlives the pod."""
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert not claims & {v["name"] for v in pod_spec(statefulset).get("volumes", [])}
    (container,) = pod_spec(statefulset)["containers"]
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims]
    return str(mount)


def assert_keeps_every_write(started: StartedRedis, data: str) -> None:
    """Every write in the append-only file, fsync'd every second, in `data`, a volume of its own."""
    options = started.options()
    assert (options["appendonly"], options["appendfsync"], options["dir"]) == ("yes", "everysec", data)


def test_redis_in_k8s_keeps_every_write_on_a_claimed_volume(k8s: Kustomized, tmp_path: Path) -> None:
    redis = k8s.find("StatefulSet", "redis")
    (container,) = pod_spec(redis)["containers"]
    mount = claimed_mount(redis)
    for pod in pod_names(redis):
        started = start_redis(k8s_argv(container), pod, mount, tmp_path / pod)
        assert_keeps_every_write(started, mount)
        started.config(mount)  # a config file, if any, is on the volume too


def test_k8s_sentinel_variant_runs_redis_0_as_master_and_redis_1_as_its_replica(tmp_path: Path) -> None:
    k8s = kustomize(K8S_SENTINEL)
    redis = k8s.find("StatefulSet", "redis")
    service = redis["spec"]["serviceName"]
    (container,) = pod_spec(redis)["containers"]
    mount, port = claimed_mount(redis), container_port(container, "redis")
    master, replica = pod_names(redis)
    roles = {}
    for pod in (master, replica):
        started = start_redis(k8s_argv(container), pod, mount, tmp_path / pod)
        # The name a pod gives its master is what the sentinels hand out when they promote it.
        announced = started.options()["replica-announce-ip"]
        assert announced == f"{pod}.{service}"
        k8s.service_of_host(announced)
        assert int(started.options().get("port", REDIS_PORT)) == port
        roles[pod] = config_value(started.config(mount), "replicaof")
    assert roles == {master: None, replica: [f"{master}.{service}", str(port)]}
    # A restart keeps the role the sentinels last wrote into the pod's config (CONFIG REWRITE).
    demoted = f"replicaof {replica}.{service} {port}\n"
    (tmp_path / master / "redis.conf").write_text(demoted, encoding="utf-8")
    again = start_redis(k8s_argv(container), master, mount, tmp_path / master)
    assert config_value(again.config(mount), "replicaof") == [f"{replica}.{service}", str(port)]
    assert k8s.find("PodDisruptionBudget", "redis")["spec"]["maxUnavailable"] == 1


def assert_sentinel_config(lines: list[list[str]], announced: str, port: int) -> tuple[str, str, int, int]:
    """A sentinel's config: on `port`, known to the others as `announced`, naming servers by DNS name.
    Returns what it watches: the master's name, host, port, and the quorum."""
    assert config_value(lines, "port") == [str(port)]
    assert config_value(lines, "sentinel", "resolve-hostnames") == ["yes"]
    assert config_value(lines, "sentinel", "announce-hostnames") == ["yes"]
    assert config_value(lines, "sentinel", "announce-ip") == [announced]
    monitor = config_value(lines, "sentinel", "monitor")
    assert monitor is not None
    name, host, master_port, quorum = monitor
    return name, host, int(master_port), int(quorum)


def test_k8s_sentinel_variant_runs_three_sentinels_that_the_gateway_asks(tmp_path: Path) -> None:
    k8s = kustomize(K8S_SENTINEL)
    store = k8s.settings(tmp_path).session_store
    assert store.type == "redis-sentinel"
    sentinels = k8s.find("StatefulSet", "redis-sentinel")
    service = sentinels["spec"]["serviceName"]
    pods = pod_names(sentinels)
    assert len(pods) == 3
    (container,) = pod_spec(sentinels)["containers"]
    port, mount = container_port(container, "sentinel"), claimed_mount(sentinels)
    assert store.addresses() == [(f"{pod}.{service}", port) for pod in pods]
    for host, address_port in store.addresses():
        assert k8s.pod_port(host, address_port) == (sentinels, port)
    redis = k8s.find("StatefulSet", "redis")
    (redis_container,) = pod_spec(redis)["containers"]
    first_master = f"{pod_names(redis)[0]}.{redis['spec']['serviceName']}"
    for pod in pods:
        started = start_redis(k8s_argv(container), pod, mount, tmp_path / pod)
        assert started.options() == {"sentinel": ""}
        config = started.config(mount)  # on the claim: the sentinel's state outlives its pod
        name, host, master_port, quorum = assert_sentinel_config(config, f"{pod}.{service}", port)
        assert (name, host, master_port) == (store.service_name, first_master, container_port(redis_container, "redis"))
        k8s.service_of_host(host)
        assert quorum == len(pods) // 2 + 1
    assert k8s.find("PodDisruptionBudget", "redis-sentinel")["spec"]["maxUnavailable"] == 1


COMPOSE_VARIANTS = [(COMPOSE,), (COMPOSE, COMPOSE_SENTINEL)]
# What a later compose file may set on a service that an earlier one defines, merged as compose
# merges them: mappings key by key, anything else replaced. Compose merges other keys
# (ports, volumes, ...) by rules of their own, which these helpers do not follow.
COMPOSE_OVERRIDABLE = frozenset(
    {"image", "user", "hostname", "restart", "entrypoint", "command", "environment", "depends_on", "healthcheck"}
)


@functools.cache
def compose_project(*files: Path) -> dict[str, Any]:
    """`docker compose -f FILE ... config` for what deploy/ uses: the services and named volumes of
    each file added to those of the files before it."""
    services: dict[str, dict[str, Any]] = {}
    volumes: dict[str, Any] = {}
    for path in files:
        (compose,) = documents(path)
        volumes |= compose.get("volumes") or {}
        for name, service in compose["services"].items():
            base = services.get(name)
            if base is None:
                services[name] = service
                continue
            assert set(service) <= COMPOSE_OVERRIDABLE, (path.name, name)
            services[name] = base | {
                key: base[key] | value if isinstance(value, dict) and key in base else value
                for key, value in service.items()
            }
    return {"services": services, "volumes": volumes}


def compose_services(*files: Path) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose_project(*files)["services"]
    return services


@pytest.fixture(params=COMPOSE_VARIANTS, ids=lambda files: "+".join(f.name for f in files))
def compose_files(request: pytest.FixtureRequest) -> tuple[Path, ...]:
    """Each compose variant: what the one-Redis tests check holds with Sentinel too."""
    files: tuple[Path, ...] = request.param
    return files


def compose_argv(service: dict[str, Any]) -> list[str]:
    """The container's command line, `$$` being compose's escape for `$`."""
    argv = [*service.get("entrypoint", []), *service.get("command", [])]
    return [arg.replace("$$", "$") for arg in argv]


def compose_gateways(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if "AGENTGW_CONFIG" in s.get("environment", {})}


def compose_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each bind mount (compose resolves host paths from deploy/)."""
    mounts = {}
    for volume in service["volumes"]:
        host, container, *_ = volume.split(":")
        mounts[container] = (DEPLOY / host).resolve()
    return mounts


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items()}


def compose_redis(files: tuple[Path, ...], tmp: Path) -> dict[str, tuple[StartedRedis, str]]:
    """Each Redis and sentinel container of the project, started as compose starts it: the
    redis-server it runs, and where its volume (a named one: it outlives the container) is mounted."""
    project = compose_project(*files)
    started = {}
    for name, service in project["services"].items():
        if not str(service["image"]).startswith("redis:"):
            continue
        (volume,) = service["volumes"]
        source, mount = volume.split(":")
        assert source in project["volumes"], f"{name}: {source} is not a named volume"
        started[name] = (start_redis(compose_argv(service), service.get("hostname", name), mount, tmp / name), mount)
    return started


def test_compose_runs_two_gateways_on_one_redis() -> None:
    services = compose_services(COMPOSE)
    gateways = compose_gateways(services)
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


def test_compose_sets_only_env_the_gateway_reads(compose_files: tuple[Path, ...]) -> None:
    secrets = policy_secret_envs([str(ROOT / "policies")])
    for gateway in compose_gateways(compose_services(*compose_files)).values():
        names = set(gateway["environment"])
        assert names <= GATEWAY_ENV | secrets
        assert secrets <= names


def test_compose_config_validates_and_reaches_compose_services(compose_files: tuple[Path, ...]) -> None:
    services = compose_services(*compose_files)
    for gateway in compose_gateways(services).values():
        env = compose_env(gateway)
        mounts = compose_mounts(gateway)
        assert mounts[env["AGENTGW_CONFIG"]] == DEPLOY / "agentgw.yaml"
        assert mounts[env["AGENTGW_POLICIES"]] == ROOT / "policies"
        settings = load_settings(mounts[env["AGENTGW_CONFIG"]], env)
        assert split_host_port(settings.server.listen) == ("0.0.0.0", HTTP_PORT)
        assert split_host_port(settings.server.metrics_listen) == ("0.0.0.0", METRICS_PORT)
        for host, _ in store_addresses(settings.session_store):
            assert host in gateway["depends_on"], host
        for backend in (b for t in settings.mcp.targets for b in t.backends):
            parts = urlsplit(backend.url)
            assert parts.hostname in gateway["depends_on"], backend.url
            argv = compose_argv(services[str(parts.hostname)])
            # Both bind loopback unless told otherwise.
            assert mcp_server_listen(argv) == ("0.0.0.0", parts.port), backend.url
            if argv[0] == "agentgw":
                assert parts.path == BRIDGE_PATH


def test_compose_redis_keeps_every_write_in_a_named_volume(compose_files: tuple[Path, ...], tmp_path: Path) -> None:
    servers = {
        name: s for name, s in compose_redis(compose_files, tmp_path).items() if "sentinel" not in s[0].options()
    }
    assert servers
    for started, mount in servers.values():
        assert_keeps_every_write(started, mount)
        started.config(mount)  # a config file, if any, is in the volume too


def test_compose_sentinel_variant_runs_redis_as_master_and_redis_replica_as_its_replica(tmp_path: Path) -> None:
    services = compose_services(COMPOSE, COMPOSE_SENTINEL)
    started = compose_redis((COMPOSE, COMPOSE_SENTINEL), tmp_path)
    servers = {name: s for name, s in started.items() if "sentinel" not in s[0].options()}
    roles = {}
    for name, (server, mount) in servers.items():
        # Each container's name is its service name, which the sentinels hand out when they promote it.
        assert services[name]["hostname"] == name
        assert server.options()["replica-announce-ip"] == name
        roles[name] = config_value(server.config(mount), "replicaof")
    assert roles == {"redis": None, "redis-replica": ["redis", str(REDIS_PORT)]}
    assert services["redis-replica"]["depends_on"]["redis"]["condition"] == "service_healthy"
    # A restart keeps the role the sentinels last wrote into the container's config (CONFIG REWRITE).
    (tmp_path / "redis" / "redis.conf").write_text(f"replicaof redis-replica {REDIS_PORT}\n", encoding="utf-8")
    again = start_redis(compose_argv(services["redis"]), "redis", "/data", tmp_path / "redis")
    assert config_value(again.config("/data"), "replicaof") == ["redis-replica", str(REDIS_PORT)]


def test_compose_sentinel_variant_runs_three_sentinels_that_the_gateways_ask(tmp_path: Path) -> None:
    services = compose_services(COMPOSE, COMPOSE_SENTINEL)
    started = compose_redis((COMPOSE, COMPOSE_SENTINEL), tmp_path)
    sentinels = {name: s for name, s in started.items() if "sentinel" in s[0].options()}
    assert len(sentinels) == 3
    ports = set()
    for gateway in compose_gateways(services).values():
        store = load_settings(DEPLOY / "agentgw.yaml", compose_env(gateway)).session_store
        assert store.type == "redis-sentinel"
        assert {host for host, _ in store.addresses()} == set(sentinels)
        ports |= {port for _, port in store.addresses()}
        for name in sentinels:
            assert gateway["depends_on"][name]["condition"] == "service_healthy"
    (port,) = ports
    for name, (sentinel, mount) in sentinels.items():
        assert services[name]["hostname"] == name
        watched = assert_sentinel_config(sentinel.config(mount), name, port)
        assert watched == (store.service_name, "redis", REDIS_PORT, len(sentinels) // 2 + 1)
        assert "redis" in services[name]["depends_on"]  # resolved as the sentinel starts


def test_compose_runs_the_stdio_example_behind_the_bridge_from_the_gateway_image(
    compose_files: tuple[Path, ...],
) -> None:
    services = compose_services(*compose_files)
    (url,) = backend_urls(load_settings(DEPLOY / "agentgw.yaml", {}), "notes")
    bridge = services[str(urlsplit(url).hostname)]
    assert bridge_options(compose_argv(bridge)).server_command == STDIO_EXAMPLE
    assert {bridge["image"]} == {g["image"] for g in compose_gateways(services).values()}
    assert bridge["read_only"] is True and bridge["tmpfs"] == ["/tmp"]
    assert "ports" not in bridge  # reached through the gateways only


def readme_store_configs() -> list[str]:
    """The YAML blocks of deploy/README.md that configure the session store."""
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    return [block for block in blocks if block.startswith("session_store:")]


def test_readme_managed_cluster_config_validates(tmp_path: Path) -> None:
    (cluster,) = [block for block in readme_store_configs() if "redis-cluster" in block]
    path = tmp_path / "agentgw.yaml"
    path.write_text(cluster, encoding="utf-8")
    store = load_settings(path, {}).session_store
    assert store.type == "redis-cluster"
    assert store.tls and store.username and store.password_env
    assert len(store.addresses()) == 1  # the provider's configuration endpoint
    env = {"SESSION_STORE_TYPE": "redis-cluster", "REDIS_CLUSTER_NODES": "cfg.example.internal:6379"}
    assert load_settings(None, env).session_store.addresses() == [("cfg.example.internal", 6379)]


def test_workspace_joins_docs_and_the_notes_tools_the_policies_allow(tmp_path: Path) -> None:
    # Each config with the policies its gateways mount: the ConfigMap's, the repository's.
    k8s = kustomize(K8S)
    deployed = (
        (k8s.settings(tmp_path), k8s.policies_dir(tmp_path)),
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
        argv = compose_argv(compose_services(COMPOSE)[str(urlsplit(backend_urls(settings, "notes")[0]).hostname)])
    else:
        k8s = kustomize(K8S)
        settings = k8s.settings(tmp_path)
        (container,) = pod_spec(k8s.find("StatefulSet", "notes-mcp"))["containers"]
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
