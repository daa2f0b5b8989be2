"""A provider type is a class registered under the `agentgw.llm_providers` entry-point group:
installing a package is enough, the gateway is not edited (contract 3)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stub_providers import client, llm_config
from tests.support import ROOT, gateway

SHOUT_PROVIDER = '''\
"""A provider that shouts the last user message back, word by word when streaming."""

import time


class ShoutProvider:
    def __init__(self, config, http):
        self.name = config.name

    async def complete(self, request, model):
        return {
            "id": "chatcmpl-shout",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": _shout(request)}, "finish_reason": "stop"}
            ],
        }

    async def stream(self, request, model):
        base = {"id": "chatcmpl-shout", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        for index, word in enumerate(_shout(request).split(" ")):
            text = word if index == 0 else " " + word
            yield {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}

    async def models(self):
        return ["loud"]


def _shout(request):
    users = [m["content"] for m in request["messages"] if m.get("role") == "user"]
    return users[-1].upper() + "!"
'''


def install_shout_package(folder: Path) -> Path:
    """A module plus its dist-info, as pip would lay them out in site-packages."""
    folder.mkdir()
    (folder / "shout_provider.py").write_text(SHOUT_PROVIDER)
    dist_info = folder / "shout_provider-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-provider\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[agentgw.llm_providers]\nshout = shout_provider:ShoutProvider\n")
    return folder


def test_provider_type_from_an_entry_point_answers(tmp: Path) -> None:
    site = install_shout_package(tmp / "site")
    # A process: the package is installed for `agentgw serve` the way pip would, on its path.
    config = llm_config({"name": "loud", "type": "shout"}, models={"yell": ["loud/loud"]})
    gw = gateway(tmp, config, env={"PYTHONPATH": str(site)})
    try:
        sdk = client(gw)
        answer = sdk.chat.completions.create(model="yell", messages=[{"role": "user", "content": "hello there"}])
        quiet = [{"role": "user", "content": "quiet please"}]
        chunks = list(sdk.chat.completions.create(model="loud/loud", messages=quiet, stream=True))
        models = {m.id for m in sdk.models.list()}
    finally:
        gw.stop()

    assert answer.choices[0].message.content == "HELLO THERE!"
    assert [c.choices[0].delta.content for c in chunks] == ["QUIET", " PLEASE!", None]
    assert models == {"yell", "loud/loud"}


def serve_once(tmp: Path, llm: dict[str, Any]) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`agentgw serve` with this chat config, expected to refuse it and exit."""
    config = tmp / "agentgw.yaml"
    config.write_text(
        yaml.safe_dump({**llm, "server": {"listen": "127.0.0.1:0", "metrics_listen": ""}, "policies": []})
    )
    result = subprocess.run(
        [sys.executable, "-m", "agentgw", "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return config, result


def test_unknown_provider_type_stops_the_gateway_at_start_with_exit_2(tmp: Path) -> None:
    _, result = serve_once(tmp, llm_config({"name": "loud", "type": "shout"}))  # nothing registers `shout` here

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "shout" in result.stderr


@pytest.mark.parametrize(
    "llm",
    [
        llm_config({"name": "loud", "type": "shout"}),
        llm_config({"name": "echo", "type": "echo"}, models={"m": ["nowhere/x"]}),
    ],
    ids=["unknown-type", "route-to-no-provider"],
)
def test_chat_config_errors_name_the_file_and_line(tmp: Path, llm: dict[str, Any]) -> None:
    config, result = serve_once(tmp, llm)

    assert result.returncode == 2
    assert re.search(rf"{re.escape(str(config))}:\d+:", result.stderr), result.stderr
