"""Connectors: what a block does. One module each, found through a registry.

A connector is a class with a `name`, a pydantic `Config` model and an async `run`.
Third-party packages add connectors through the `solder.connectors` entry point group:
each entry point names a Connector subclass, instantiated once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from solder.expressions import has_template
from solder.network import HttpClient
from solder.settings import Settings

REDACTED = "[redacted]"
"""What a secret is replaced by wherever Solder records or shows it."""

Item = dict[str, Any]
"""One output item: at least `json`; the engine adds `id`; connectors may add keys."""


class ConnectorConfig(BaseModel):
    """Base of every connector's configuration model: unknown keys are problems."""

    model_config = ConfigDict(extra="forbid")


CredentialLookup = Callable[[str], Awaitable[Mapping[str, Any]]]


async def no_credentials(name: str) -> Mapping[str, Any]:
    raise BlockFailed(f"no credential named {name!r} for this user")


@dataclass
class RunContext:
    """What a connector may use while it runs one block."""

    settings: Settings
    http: HttpClient
    execution_id: str
    user: Mapping[str, Any]
    credential: CredentialLookup = no_credentials
    """The user's credential of that name: `{"type": ..., **secret data}`."""
    secrets: set[str] = field(default_factory=set)
    """Every secret value the block used (and derived forms, e.g. a Basic header's
    base64): the engine removes them from whatever it records of the block."""


@dataclass
class BlockResult:
    """A block's outputs (each a list of items) and how many calls it made to other apps."""

    outputs: list[list[Item]]
    app_actions: int = 0


@dataclass
class BlockFailed(Exception):
    """The block failed; `items` (e.g. the error response) are recorded as its output."""

    message: str
    items: list[Item] = field(default_factory=list)
    app_actions: int = 0
    retryable: bool = False
    retry_after_ms: int | None = None
    """The least wait before a retry that the other app asked for (`Retry-After`)."""

    def __str__(self) -> str:
        return self.message


class Connector:
    """The interface every connector implements."""

    name: ClassVar[str]
    Config: ClassVar[type[ConnectorConfig]] = ConnectorConfig
    flow: ClassVar[bool] = False
    """True for branch, loop and delay: the engine itself does what they do."""
    pure: ClassVar[bool] = False
    """True if running the block affects nothing outside the execution (no call out, no
    wait): its step may then be written with the next one, as running it again after a
    crash changes nothing anyone saw (docs/decisions.md)."""

    async def run(self, config: Any, ctx: RunContext) -> BlockResult:
        raise NotImplementedError

    def check(self, config: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Problems in a configuration before its expressions are resolved.

        A value that is an expression is checked only once resolved, at run time.
        """
        try:
            self.Config.model_validate(dict(config))
        except ValidationError as exc:
            return [
                (_loc(error["loc"]), _message(error))
                for error in exc.errors()
                if not (isinstance(error.get("input"), str) and has_template(error["input"]))
            ]
        return []

    def redact(self, resolved: Any) -> Any:
        """The resolved configuration as the log's `inputs` show it, secrets hidden."""
        return resolved

    def parse(self, resolved: Mapping[str, Any]) -> Any:
        """The resolved configuration as the connector's `Config` model."""
        try:
            return self.Config.model_validate(dict(resolved))
        except ValidationError as exc:
            problems = "; ".join(f"config{_loc(e['loc'])}: {_message(e)}" for e in exc.errors())
            raise BlockFailed(
                f"invalid configuration after resolving expressions: {problems}"
            ) from None


def _loc(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _message(error: Any) -> str:
    if error["type"] == "missing":
        return "required"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return str(error["msg"])


@cache
def registry() -> Mapping[str, Connector]:
    """Every connector by name: the built-in ones, then those of installed plugins."""
    from solder.connectors.flow import BranchConnector, DelayConnector, LoopConnector
    from solder.connectors.http import HttpConnector
    from solder.connectors.transform import TransformConnector

    built_in: tuple[Connector, ...] = (
        HttpConnector(),
        TransformConnector(),
        BranchConnector(),
        LoopConnector(),
        DelayConnector(),
    )
    found: dict[str, Connector] = {c.name: c for c in built_in}
    origin = dict.fromkeys(found, "solder")
    for entry in entry_points(group="solder.connectors"):
        try:
            connector = entry.load()()
        except Exception as exc:
            raise PluginError(f"cannot load connector plugin {entry.value}: {exc!r}") from exc
        if connector.name in found:
            raise PluginError(
                f"two connectors are named {connector.name!r}: {origin[connector.name]} and "
                f"{entry.value}; uninstall one of them"
            )
        found[connector.name] = connector
        origin[connector.name] = entry.value
    return found


class PluginError(Exception):
    """A connector plugin cannot be used."""
