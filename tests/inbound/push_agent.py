"""The example a2a-sdk agent with push notifications on: it calls every webhook it is given.

It screens no webhook URL itself, as many agents do not, so what it calls is
exactly what the gateway let through:

    python tests/a2a/push_agent.py --port 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import BasePushNotificationSender, InMemoryPushNotificationConfigStore, InMemoryTaskStore
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface
from starlette.applications import Starlette

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from a2a_agent import RPC_PATH, EchoExecutor
from example_agent import serve


def build_app(base_url: str) -> Starlette:
    card = AgentCard(
        name="pusher",
        description="Echoes, and tells every webhook it is given.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=base_url + RPC_PATH, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
    )
    configs = InMemoryPushNotificationConfigStore()
    # verify=False: the test's webhook sink speaks no TLS; any byte reaching it counts.
    sender = BasePushNotificationSender(httpx.AsyncClient(verify=False, timeout=2.0), configs)
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor("pusher"),
        task_store=InMemoryTaskStore(),
        agent_card=card,
        push_config_store=configs,
        push_sender=sender,
    )
    routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, rpc_url=RPC_PATH, enable_v0_3_compat=True)
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="0: one the kernel picks")
    args = parser.parse_args()
    serve(build_app, args.port)


if __name__ == "__main__":
    main()
