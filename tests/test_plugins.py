"""Connectors from other packages, found through the `solder.connectors` entry point group.

`make test` installs the example plugin in tests/plugin (a package of its own, with its
own pyproject.toml) into the test environment, as a user would `pip install` one.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from solder.connectors import registry
from tests.conftest import Api


def shout(text: str, **config: object) -> dict[str, object]:
    return {
        "name": "Shout",
        "trigger": {"type": "webhook"},
        "blocks": [{"name": "loud", "connector": "shout", "config": {"text": text, **config}}],
    }


def test_the_installed_plugin_is_in_the_registry() -> None:
    names = {entry.name for entry in entry_points(group="solder.connectors")}
    assert "shout" in names, "the example plugin is not installed: run `make test`"
    assert registry()["shout"].name == "shout"


def test_a_plugin_connector_runs_and_is_logged_like_a_built_in_one(api: Api) -> None:
    user_id, workflow_id = api.install(shout("{{ trigger.word }}", times=2))
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id, {"word": "hey"}))
    assert log["finished"] is True
    item = log["results"][1]["data"][0][0]
    assert item["json"] == {"shout": "HEY HEY", "for": "ada"}
    assert log["inputs"][1]["data"] == {"text": "hey", "times": 2}


def test_a_plugin_configuration_is_validated_before_it_is_stored(api: Api) -> None:
    response = api.post("/workflows", json=shout("hi", times=99, volume="max"))
    assert response.status_code == 400
    paths = {problem["path"] for problem in response.json()["errors"]}
    assert paths == {"blocks[0].config.times", "blocks[0].config.volume"}


def test_a_plugin_failure_fails_its_block_with_its_message(api: Api) -> None:
    user_id, workflow_id = api.install(shout("{{ trigger.word }}"))
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id, {"word": " "}))
    assert log["status"] == "failed"
    assert log["results"][1]["error"]["message"] == "there is nothing to shout"
