"""Example A2A agent for agentgw, built with the a2a-sdk (v1.0, with 0.3 compatibility).

It echoes the user's text as a task artifact, naming its replica so a client
can see which one holds a task:

    python examples/a2a_agent.py --port 9101 --name planner-a
"""

from __future__ import annotations

import argparse

import uvicorn
from a2a.helpers.proto_helpers import new_task, new_text_artifact
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, TaskState
from starlette.applications import Starlette

RPC_PATH = "/a2a/jsonrpc"


class EchoExecutor(AgentExecutor):
    def __init__(self, replica: str) -> None:
        self.replica = replica

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        if context.current_task is None:
            history = [context.message] if context.message is not None else []
            task = new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED, history=history)
            await event_queue.enqueue_event(task)
        await updater.start_work()
        artifact = new_text_artifact(name="echo", text=f"{self.replica}: {context.get_user_input()}")
        await updater.add_artifact(list(artifact.parts), artifact_id=artifact.artifact_id, name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def build_app(replica: str, base_url: str) -> Starlette:
    card = AgentCard(
        name="planner",
        description="Echoes what it is told, naming the replica that did.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=base_url.rstrip("/") + RPC_PATH, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(id="echo", name="echo", description="Echo a text", tags=["echo"]),
        ],
    )
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(replica), task_store=InMemoryTaskStore(), agent_card=card
    )
    routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, rpc_url=RPC_PATH, enable_v0_3_compat=True)
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--name", default="planner-a", help="replica name shown in answers")
    args = parser.parse_args()
    app = build_app(args.name, f"http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
