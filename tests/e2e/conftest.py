"""The e2e setting as fixtures: `world` (the fake API server, torn down with every replica and
queue a test started in it) and `chat_queue` (the common one-pool setting and its queue). A module
sets `fake_kube_options` to start the fake differently."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.harness import Queue, World, open_world
from tests.integration.servers import RabbitMQServer


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    """Keyword arguments for `FakeKube` beyond the harness's defaults."""
    return {}


@pytest_asyncio.fixture
async def world(
    tmp_path: Path, rabbitmq: RabbitMQServer, fake_kube_options: dict[str, Any]
) -> AsyncIterator[World]:
    async with open_world(tmp_path, rabbitmq, **fake_kube_options) as w:
        yield w


@pytest_asyncio.fixture
async def chat_queue(world: World) -> Queue:
    """One 16-GPU A100 node, the Deployment `chat-a100` at zero, and the queue of its backlog."""
    return await world.one_chat_pool()
