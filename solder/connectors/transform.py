"""`transform`: outputs the result of a JSONata expression."""

from __future__ import annotations

from typing import Any

from solder.connectors import BlockResult, Connector, ConnectorConfig, RunContext


class TransformConfig(ConnectorConfig):
    expression: Any


class TransformConnector(Connector):
    name = "transform"
    Config = TransformConfig
    pure = True

    async def run(self, config: TransformConfig, ctx: RunContext) -> BlockResult:
        # The engine has already evaluated `{{ }}`: the expression's value is the result.
        return BlockResult([[{"json": config.expression}]])
