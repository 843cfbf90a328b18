"""`shout`: an example third-party connector (see docs/connectors.md)."""

from __future__ import annotations

from pydantic import Field

from solder.connectors import BlockFailed, BlockResult, Connector, ConnectorConfig, RunContext


class ShoutConfig(ConnectorConfig):
    text: str
    times: int = Field(default=1, ge=1, le=10)


class ShoutConnector(Connector):
    """Outputs its text in capitals, `times` times; refuses to shout nothing."""

    name = "shout"
    Config = ShoutConfig

    async def run(self, config: ShoutConfig, ctx: RunContext) -> BlockResult:
        if not config.text.strip():
            raise BlockFailed("there is nothing to shout")
        loud = " ".join([config.text.upper()] * config.times)
        return BlockResult([[{"json": {"shout": loud, "for": ctx.user["username"]}}]])
