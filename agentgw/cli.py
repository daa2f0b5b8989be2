"""agentgw serve | ... : the command line (contract section 2)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import uvicorn

from agentgw.config import Settings, config_path, load_settings, split_host_port
from agentgw.policy.loader import load_policies
from agentgw.policy.model import PolicySet
from agentgw.typed_yaml import ConfigError

USAGE_ERROR = 2
# uvloop and httptools for speed; no proxy-header rewriting, access log, Server or
# Date header: per-request work the gateway does not need.
_UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "access_log": False,
    "proxy_headers": False,
    "server_header": False,
    "date_header": False,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentgw", description="MCP/A2A agent gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="agentgw.yaml (default: $AGENTGW_CONFIG, then ./agentgw.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(config_path(args.config, os.environ))
        policies = load_policies(settings.policies)
    except ConfigError as exc:
        print(f"agentgw: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if args.command == "serve":
        return serve(settings, policies, args.config)
    return USAGE_ERROR


def serve(settings: Settings, policies: PolicySet, config_file: str | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host, port = split_host_port(settings.server.listen)
    if settings.server.workers > 1:
        # Workers import the app themselves; they find the same config through the environment.
        if config_file:
            os.environ["AGENTGW_CONFIG"] = config_file
        uvicorn.run(
            "agentgw.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=settings.server.workers,
            **_UVICORN_OPTIONS,
            log_level="warning",
        )
        return 0
    from agentgw.app import create_app

    try:
        app = create_app(settings, policies)
    except ConfigError as exc:
        print(f"agentgw: {exc}", file=sys.stderr)
        return USAGE_ERROR
    uvicorn.run(
        app,
        host=host,
        port=port,
        **_UVICORN_OPTIONS,
        log_level="info",
    )
    return 0
