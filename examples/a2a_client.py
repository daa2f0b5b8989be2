"""Talk to an A2A agent through agentgw with the a2a-sdk client.

export AGENTGW_TOKEN=...   # the dev token `make run` prints (it holds the agents:planner scope)
.venv/bin/python examples/a2a_client.py [AGENT] [TEXT]

The agent is $AGENTGW_URL/a2a/v1/AGENT (AGENTGW_URL: http://127.0.0.1:8080, AGENT: planner).
The client follows the agent card the gateway serves, whose URL points at the gateway,
so it never reaches the agent directly.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import httpx  # the a2a-sdk client is built on httpx (the MCP SDK's is httpx2)
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.types.a2a_pb2 import GetTaskRequest, Message, Part, Role, SendMessageRequest, TaskState

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
NO_TOKEN = "AGENTGW_TOKEN is not set: the gateway will answer 401 (export the dev token `make run` printed)"


def message(text: str) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)])
    )


async def main(agent: str, text: str) -> None:
    gateway = os.environ.get("AGENTGW_URL", DEFAULT_GATEWAY).rstrip("/")
    token = os.environ.get("AGENTGW_TOKEN")
    if not token:
        print(NO_TOKEN, file=sys.stderr)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # The SDK sends every request, the card's included, through this client: the token rides along.
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        card = await A2ACardResolver(http, f"{gateway}/a2a/v1/{agent}").get_agent_card()
        print(f"card: {card.name} at {', '.join(i.url for i in card.supported_interfaces)}")
        print("skills:", ", ".join(skill.id for skill in card.skills))

        # SendMessage: one answer, the finished task. The client is not closed: it shares `http`.
        client = await create_client(card, client_config=ClientConfig(streaming=False, httpx_client=http))
        task = None
        async for event in client.send_message(message(text)):
            if event.HasField("task"):
                task = event.task
        if task is None:
            sys.exit("the agent answered without a task")
        print(f"answer: {task.artifacts[0].parts[0].text} ({TaskState.Name(task.status.state)})")
        # GetTask reaches the replica that holds the task, wherever the call enters the gateway.
        again = await client.get_task(GetTaskRequest(id=task.id))
        print(f"task {again.id}: {TaskState.Name(again.status.state)}")

        # SendStreamingMessage: the agent's events relayed one by one as SSE.
        streaming = await create_client(card, client_config=ClientConfig(streaming=True, httpx_client=http))
        kinds = []
        async for event in streaming.send_message(message(text + ", streamed")):
            kind = event.WhichOneof("payload")
            kinds.append(kind)
            if kind == "artifact_update":
                print(f"stream: {event.artifact_update.artifact.parts[0].text}")
        print("events:", ", ".join(kinds))


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1] if len(sys.argv) > 1 else "planner", sys.argv[2] if len(sys.argv) > 2 else "Plan a trip")
    )
