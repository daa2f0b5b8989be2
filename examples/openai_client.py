"""Chat through agentgw with the OpenAI Python SDK.

export AGENTGW_TOKEN=...   # the dev token `make run` prints
.venv/bin/python examples/openai_client.py

The gateway is $AGENTGW_URL (default http://127.0.0.1:8080); the SDK's base_url is its /v1.
"""

from __future__ import annotations

import os

from openai import OpenAI

gateway = os.environ.get("AGENTGW_URL", "http://127.0.0.1:8080").rstrip("/")
# The SDK insists on a key: the gateway's bearer token is it. Without one the gateway answers 401.
client = OpenAI(base_url=f"{gateway}/v1", api_key=os.environ.get("AGENTGW_TOKEN") or "no-token")
answer = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hello, gateway"}])
print("answer:", answer.choices[0].message.content)
stream = client.chat.completions.create(
    model="echo/echo", messages=[{"role": "user", "content": "one two three"}], stream=True
)
print(
    "stream:", [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
)
print("models:", [model.id for model in client.models.list()])
