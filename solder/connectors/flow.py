"""Flow connectors: `branch`, `loop` and `delay`. The engine runs them itself.

They are connectors for the definition format (their configuration is validated like
any other's), but what they do is decide which blocks run, and when.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from solder.connectors import BlockResult, Connector, ConnectorConfig, RunContext

MAX_DELAY_SECONDS = 30 * 24 * 3600


class BranchPath(ConnectorConfig):
    when: Any


class BranchConfig(ConnectorConfig):
    paths: list[BranchPath] = Field(min_length=1)


class LoopConfig(ConnectorConfig):
    over: Any


class DelayConfig(ConnectorConfig):
    seconds: float = Field(ge=0, le=MAX_DELAY_SECONDS)


class FlowConnector(Connector):
    """A connector whose work the engine does; `run` is never called."""

    flow = True

    async def run(self, config: Any, ctx: RunContext) -> BlockResult:
        raise RuntimeError(f"the engine runs {self.name!r} blocks itself")


class BranchConnector(FlowConnector):
    name = "branch"
    Config = BranchConfig


class LoopConnector(FlowConnector):
    name = "loop"
    Config = LoopConfig


class DelayConnector(FlowConnector):
    name = "delay"
    Config = DelayConfig
