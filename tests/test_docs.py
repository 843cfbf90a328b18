"""The docs keep up with the code: every setting documented, the CLI reference current."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from solder import cli
from solder.settings import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"
SETTINGS_MD = DOCS / "settings.md"
CLI_MD = DOCS / "cli.md"
HEADING = re.compile(r"^## `(SOLDER_[A-Z0-9_]+)`$", re.MULTILINE)


def settings_sections() -> dict[str, str]:
    """Each `## \\`SOLDER_...\\`` section of docs/settings.md, by variable name."""
    text = SETTINGS_MD.read_text()
    headings = list(HEADING.finditer(text))
    return {
        match.group(1): text[
            match.end() : headings[i + 1].start() if i + 1 < len(headings) else None
        ]
        for i, match in enumerate(headings)
    }


def env_name(field: str) -> str:
    return f"SOLDER_{field.upper()}"


def default_as_documented(value: Any) -> str:
    """A default as docs/settings.md writes it: the value one would put in the variable."""
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value == "":
        return "empty"
    return f"`{value}`"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented_with_its_default(field: str) -> None:
    sections = settings_sections()
    name = env_name(field)
    assert name in sections, f"{name} ({field} in solder/settings.py) is not in docs/settings.md"
    default = default_as_documented(Settings.model_fields[field].default)
    assert f"- Default: {default}\n" in sections[name], (
        f"docs/settings.md: {name} must say '- Default: {default}'"
    )


def test_settings_doc_names_no_setting_that_does_not_exist() -> None:
    gone = set(settings_sections()) - {env_name(field) for field in Settings.model_fields}
    assert not gone, f"docs/settings.md documents settings that do not exist: {sorted(gone)}"


def load_gen_cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date() -> None:
    expected: str = load_gen_cli().render()
    assert CLI_MD.read_text() == expected, (
        "docs/cli.md is out of date: run `.venv/bin/python docs/gen_cli.py`"
    )


@pytest.mark.parametrize(
    "command",
    [cli.serve, cli.keys_create, cli.keys_list, cli.keys_revoke, cli.migrate, cli.version],
)
def test_cli_reference_is_made_from_the_real_help(command: Any) -> None:
    rendered: str = load_gen_cli().render()
    first_line = (command.__doc__ or "").strip().splitlines()[0]
    assert first_line in rendered
