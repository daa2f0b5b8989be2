"""agentgw serve | bridge | policy | token | sessions | tools | audit: the command line (contract section 2).

Exit 2 with one line on stderr for a bad command line or a config that fails
validation. The operator commands (sessions, tools, audit) talk to the running
gateway's admin API on its metrics port.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import uvicorn

from agentgw.config import Settings, check_upstream_secrets, config_path, load_settings, split_host_port
from agentgw.inbound.client_limits import ClientLimits, http_protocol
from agentgw.observability.logs import configure_logging
from agentgw.observability.metrics import MULTIPROCESS_ENV
from agentgw.policy.guardrails import TRAFFIC
from agentgw.policy.loader import load_policies, policy_files
from agentgw.policy.model import PolicySet, Traffic
from agentgw.typed_yaml import ConfigError, Duration, parse_duration

USAGE_ERROR = 2
TRUSTED_PROXIES_ENV = "FORWARDED_ALLOW_IPS"  # read by uvicorn too: the proxies whose X-Forwarded-* count
ADMIN_TIMEOUT = 10.0
BRIDGE_SHUTDOWN_GRACE = 5
# uvloop and httptools for speed (the protocol, httptools plus the client limits of
# contract 11, is passed as `http=`); no access log, Server or Date header: per-request
# work the gateway does not need. X-Forwarded-Proto/-For are trusted only from the
# proxies FORWARDED_ALLOW_IPS names (uvicorn reads it), and only when it is set.
_UVICORN_OPTIONS: dict[str, Any] = {
    "lifespan": "on",  # a gateway whose startup failed must exit, not serve without its background tasks
    "log_config": None,  # uvicorn's lines go through the gateway's JSON logging
    "loop": "uvloop",
    "access_log": False,
    "server_header": False,
    "date_header": False,
}


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `serve` gives uvicorn beside the app and address, for one worker or many (and for tests
    that serve the app in their own event loop: they drop `loop`, the loop being theirs)."""
    return {
        **_UVICORN_OPTIONS,
        "http": http_protocol(ClientLimits.of(settings.server)),
        "ws_max_size": settings.server.max_body_bytes,
        "proxy_headers": _behind_proxy(),
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one clear line, exit 2
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def _parser() -> argparse.ArgumentParser:
    config_help = "agentgw.yaml (default: $AGENTGW_CONFIG, then ./agentgw.yaml)"
    # --config may stand before or after the command; given after, it must not be reset to None.
    common = _Parser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    parser = _Parser(prog="agentgw", description="MCP/A2A agent gateway")
    parser.add_argument("--config", default=None, help=config_help)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    commands.add_parser("serve", help="run the gateway", parents=[common])

    bridge = commands.add_parser(
        "bridge",
        help="serve one stdio MCP server over Streamable HTTP at /mcp",
        usage="agentgw bridge --listen HOST:PORT [options] -- COMMAND ARG...",
    )
    bridge.add_argument("--listen", required=True, metavar="HOST:PORT")
    bridge.add_argument("--max-processes", type=int, default=32, help="at most this many children (default 32)")
    bridge.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="for every child (${NAME}: from this shell)"
    )
    bridge.add_argument("--idle-timeout", type=float, default=600.0, help="seconds before an idle session ends (600)")
    bridge.add_argument("server_command", nargs="+", metavar="COMMAND", help="the stdio MCP server, after --")

    policy = commands.add_parser("policy", help="validate and explain policies").add_subparsers(
        dest="policy_command", required=True, parser_class=_Parser
    )
    check = policy.add_parser("check", help="validate policy files; exit 1 listing every problem", parents=[common])
    check.add_argument("paths", nargs="+")
    explain = policy.add_parser(
        "explain",
        help="print allow/deny for a tool call and the rule that decided, or the guardrails of a target",
        parents=[common],
    )
    explain.add_argument("--policies", action="append", help="policy file or folder (default: the config's)")
    explain.add_argument("--scopes", default="", help='the caller\'s scopes, space-separated: "a b"')
    subject = explain.add_mutually_exclusive_group(required=True)
    subject.add_argument("--tool")
    subject.add_argument(
        "--guardrails", action="store_true", help="the GuardrailPolicies that apply to the target, combined"
    )
    explain.add_argument(
        "--target", default=None, help="MCP target, virtual server, agent or provider (default: the config's first)"
    )
    explain.add_argument("--traffic", choices=TRAFFIC, help="with --guardrails: only this traffic (default: all)")

    token = commands.add_parser("token", help="mint an HS256 dev token", parents=[common])
    token.add_argument("--secret-env", required=True, help="environment variable holding the secret")
    token.add_argument("--sub", required=True)
    token.add_argument("--scope", default="", help='space-separated scopes: "read:documents write:email"')
    token.add_argument("--ttl", default="1h", help="lifetime: 30s, 5m, 1h")
    token.add_argument("--iss")
    token.add_argument("--aud")

    tools = commands.add_parser("tools", help="tool fingerprints and quarantines").add_subparsers(
        dest="tools_command", required=True, parser_class=_Parser
    )
    tools.add_parser("list", help="show a target's tools", parents=[common]).add_argument("target")
    approve = tools.add_parser("approve", help="lift a quarantine after a tool definition changed", parents=[common])
    approve.add_argument("target")
    approve.add_argument("tool")

    sessions = commands.add_parser("sessions", help="the running gateway's MCP sessions").add_subparsers(
        dest="sessions_command", required=True, parser_class=_Parser
    )
    listing = sessions.add_parser("list", help="live sessions, the most recently used first", parents=[common])
    listing.add_argument("--target", default=None)
    listing.add_argument("-n", type=int, default=100, help="at most this many")
    sessions.add_parser("show", help="one session's record", parents=[common]).add_argument("session_id")
    revoke = sessions.add_parser("revoke", help="end a session on every replica", parents=[common])
    revoke.add_argument("session_id")

    audit = commands.add_parser("audit", help="tool-call decisions").add_subparsers(
        dest="audit_command", required=True, parser_class=_Parser
    )
    tail = audit.add_parser("tail", help="print the latest decisions", parents=[common])
    tail.add_argument("-n", type=int, default=20)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "policy" and args.policy_command == "check":
            return policy_check(args.paths)
        if args.command == "token":
            return token(args)
        if args.command == "bridge":
            return bridge(args)
        settings = load_settings(config_path(args.config, os.environ))
        if args.command == "serve":
            check_upstream_secrets(settings, os.environ)
            policies = load_policies(settings.policies)
            return serve(settings, policies, args.config)
        if args.command == "policy":
            return policy_explain(settings, args)
        if args.command == "tools":
            return tools_command(settings, args)
        if args.command == "sessions":
            return sessions_command(settings, args)
        return audit_tail(settings, args.n)
    except ConfigError as exc:
        print(f"agentgw: {exc}", file=sys.stderr)
        return USAGE_ERROR


def serve(settings: Settings, policies: PolicySet, config_file: str | None) -> int:
    configure_logging()
    host, port = split_host_port(settings.server.listen)
    if settings.server.workers > 1:
        # Workers import the app themselves; they find the same config through the environment.
        if config_file:
            os.environ["AGENTGW_CONFIG"] = config_file
        # Any worker may answer a scrape: counters are shared through files (prometheus-client's multiprocess mode).
        metrics_dir = tempfile.mkdtemp(prefix="agentgw-metrics-")
        atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        uvicorn.run(
            "agentgw.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=settings.server.workers,
            **uvicorn_options(settings),
            log_level="warning",
        )
        return 0
    from agentgw.app import create_app
    from agentgw.observability.tracing import configure_from_environment

    configure_from_environment(os.environ)
    app = create_app(settings, policies)
    uvicorn.run(
        app,
        host=host,
        port=port,
        **uvicorn_options(settings),
        log_level="info",
    )
    return 0


def bridge(args: argparse.Namespace) -> int:
    """`agentgw bridge`: what it was given is checked before anything listens (exit 2 and one line)."""
    from agentgw.bridge import StdioBridge, bridge_app
    from agentgw.upstream.stdio import server_parameters

    def refuse(message: str) -> int:
        print(f"agentgw bridge: {message}", file=sys.stderr)
        return USAGE_ERROR

    host, port = split_host_port(args.listen, "--listen")
    if args.max_processes < 1:
        return refuse("--max-processes: must be at least 1")
    if not args.idle_timeout > 0:
        return refuse("--idle-timeout: must be a positive number of seconds")
    env: dict[str, str] = {}
    for item in args.env:
        name, equals, value = item.partition("=")
        if not equals or not name.isidentifier():
            return refuse(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    command = args.server_command
    if shutil.which(command[0]) is None:
        return refuse(f"{command[0]}: command not found")
    try:
        params = server_parameters(command, env, None, os.environ)
    except ValueError as exc:
        return refuse(str(exc))
    configure_logging()
    stdio_bridge = StdioBridge(
        params, target=os.path.basename(command[0]), max_processes=args.max_processes, idle_timeout=args.idle_timeout
    )
    # Open event streams hold uvicorn's shutdown until this runs out; then the children are ended.
    options = {**_UVICORN_OPTIONS, "timeout_graceful_shutdown": BRIDGE_SHUTDOWN_GRACE}
    uvicorn.run(bridge_app(stdio_bridge, host), host=host, port=port, **options, log_level="info")
    return 0


def _behind_proxy() -> bool:
    return bool(os.environ.get(TRUSTED_PROXIES_ENV))


def policy_check(paths: list[str]) -> int:
    """Every file checked on its own, so one run names every broken file; then all together."""
    problems: list[str] = []
    try:
        files = policy_files(paths)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in files:
        try:
            load_policies([str(path)])
        except ConfigError as exc:
            problems.append(str(exc))
    if not problems:
        try:
            load_policies([str(p) for p in files])
        except ConfigError as exc:
            problems.append(str(exc))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{len(files)} policy files: ok")
    return 0


def policy_explain(settings: Settings, args: argparse.Namespace) -> int:
    from agentgw.policy.engine import PolicyEngine

    policies = load_policies(args.policies or settings.policies)
    target = args.target or (settings.mcp.targets[0].name if settings.mcp.targets else "default")
    if args.guardrails:
        return guardrails_explain(policies, target, [args.traffic] if args.traffic else list(TRAFFIC))
    decision = PolicyEngine(policies.tools).decide(target, "tool", args.tool, frozenset(args.scopes.split()))
    verdict = "allow" if decision.allowed else f"deny ({decision.reason})"
    print(f"{verdict}: tool {args.tool!r} on target {target!r}")
    if decision.policy:
        print(f"policy: {decision.policy}")
    print(f"rule: {decision.rule}")
    if decision.required_scopes:
        print(f"scopes that would allow it: {' '.join(decision.required_scopes)}")
    return 0 if decision.allowed else 1


def guardrails_explain(policies: PolicySet, target: str, traffic_kinds: list[Traffic]) -> int:
    """Per kind of traffic: the GuardrailPolicies that apply to the target and what they add up to."""
    from agentgw.policy.guardrails import Guardrails

    guardrails = Guardrails(policies.guardrails)
    for traffic in traffic_kinds:
        guard = guardrails.guard(traffic, target)
        if guard is None:
            print(f"{traffic} from target {target!r}: no GuardrailPolicy applies, relayed unscanned")
            continue
        print(f"{traffic} from target {target!r}: {', '.join(guard.policies)}")
        for detector, action in guard.actions.items():
            print(f"  {detector}: {action}")
        print(f"  sampling: {guard.sampling}")
        print(f"  elicitation: {guard.elicitation}, sensitiveFields: {guard.sensitive_fields}")
    return 0


def token(args: argparse.Namespace) -> int:
    from agentgw.auth.jwt import mint_token

    secret = os.environ.get(args.secret_env)
    if not secret:
        print(f"agentgw: environment variable {args.secret_env} is not set", file=sys.stderr)
        return USAGE_ERROR
    try:
        ttl: Duration = parse_duration(args.ttl)
    except ValueError as exc:
        print(f"agentgw: --ttl: {exc}", file=sys.stderr)
        return USAGE_ERROR
    print(mint_token(secret, args.sub, args.scope.split(), ttl, issuer=args.iss, audience=args.aud))
    return 0


def tools_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.tools_command == "list":
        answer = _admin(settings, "GET", f"/admin/tools/{args.target}")
        for name, entry in answer["tools"].items():
            state = "QUARANTINED" if entry["quarantined"] else "ok"
            reason = f"  ({entry['reason']})" if entry["reason"] else ""
            print(f"{name:<32} {state:<12} {entry['current'][:16]}{reason}")
        return 0
    answer = _admin(settings, "POST", f"/admin/tools/{args.target}/{args.tool}/approve")
    print(f"approved {answer['tool']} of target {answer['target']}: {answer['entry']['current'][:16]}")
    return 0


def sessions_command(settings: Settings, args: argparse.Namespace) -> int:
    session = urllib.parse.quote(getattr(args, "session_id", ""), safe="")
    if args.sessions_command == "show":
        print(json.dumps(_admin(settings, "GET", f"/admin/sessions/{session}"), indent=2, ensure_ascii=False))
        return 0
    if args.sessions_command == "revoke":
        answer = _admin(settings, "DELETE", f"/admin/sessions/{session}")
        print(f"revoked session {answer['revoked']} (target {answer['target']})")
        return 0
    query = urllib.parse.urlencode({"limit": args.n, **({"target": args.target} if args.target else {})})
    for entry in _admin(settings, "GET", f"/admin/sessions?{query}")["sessions"]:
        seen = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["last_seen"]))
        print(f"{entry['id']}  {entry['target']:<16} {entry['subject'] or '-':<24} {seen}  {entry['backend']}")
    return 0


def audit_tail(settings: Settings, count: int) -> int:
    for entry in _admin(settings, "GET", f"/admin/audit?n={count}")["entries"]:
        print(json.dumps(entry, ensure_ascii=False))
    return 0


def _admin(settings: Settings, method: str, path: str) -> Any:
    listen = settings.server.metrics_listen
    if not listen:
        raise ConfigError(settings.source, 0, "server.metrics_listen is off: the admin API is not served")
    host, port = split_host_port(listen)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        print(f"agentgw: {detail}", file=sys.stderr)
        raise SystemExit(1) from None
    except (urllib.error.URLError, OSError) as exc:
        print(f"agentgw: cannot reach the gateway's admin API at {url}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
