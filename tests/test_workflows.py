"""/workflows: definitions, validation, versions, and each user's installation."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from tests.conftest import Api
from tests.test_protocol import MISSING_ID, assert_error

OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SUMMARY_KEYS = {"workflowId", "name", "version", "installedVersion", "active"}
SUMMARY_KEYS |= {"createdAt", "updatedAt", "blocks"}


def transform(name: str, expression: Any) -> dict[str, Any]:
    return {"name": name, "connector": "transform", "config": {"expression": expression}}


def workflow(name: str = "sync", *blocks: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "trigger": {"type": "webhook"},
        "blocks": list(blocks) or [transform("out", "{{ 'v1' }}")],
    }


def output(log: dict[str, Any]) -> Any:
    return log["results"][-1]["data"][0][0]["json"]


def test_create_answers_201_with_id_and_version_1(api: Api) -> None:
    response = api.post("/workflows", json=workflow())
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"workflowId", "version"}
    assert OBJECT_ID.match(body["workflowId"])
    assert body["version"] == 1


def test_duplicate_name_is_409(api: Api) -> None:
    first = api.create_workflow(workflow("sync"))
    assert assert_error(api.post("/workflows", json=workflow("sync")), 409)["error"] == "conflict"
    other = api.create_workflow(workflow("other"))
    assert_error(api.put(f"/workflows/{other}", json=workflow("sync")), 409)
    names = [w["name"] for w in api.get("/workflows").json()["data"]]
    assert names == ["sync", "other"]
    assert api.get("/workflows/sync").json()["data"]["workflowId"] == first


# --- validation --------------------------------------------------------------------

ONE = transform("a", "{{ 1 }}")
EXPR, ATTEMPTS = "blocks[0].config.expression", "blocks[0].retry.attempts"
PROBLEMS: list[tuple[str, dict[str, Any], str]] = [
    ("missing name", {"trigger": {"type": "webhook"}, "blocks": []}, "name"),
    ("empty name", {**workflow(), "name": " "}, "name"),
    ("unknown connector", workflow("w", {**ONE, "connector": "ftp"}), "blocks[0].connector"),
    ("duplicate names", workflow("w", ONE, transform("a", "{{ 2 }}")), "blocks[1].name"),
    ("unparsable expression", workflow("w", transform("a", "{{ foo[ }}")), EXPR),
    ("reference to a later block", workflow("w", transform("a", "{{ blocks.later.x }}"),
     transform("later", "{{ 1 }}")), EXPR),
    ("reference to itself", workflow("w", transform("a", "{{ blocks.a }}")), EXPR),
    ("unknown block", workflow("w", transform("a", "{{ blocks.ghost }}")), EXPR),
    ("http without url", workflow("w", {"name": "a", "connector": "http"}), "blocks[0].config.url"),
    ("unknown config key", workflow("w", {"name": "a", "connector": "http",
     "config": {"url": "http://x", "urll": "http://y"}}), "blocks[0].config.urll"),
    ("bad attempts", workflow("w", {**ONE, "retry": {"attempts": 0}}), ATTEMPTS),
    ("string attempts", workflow("w", {**ONE, "retry": {"attempts": "3"}}), ATTEMPTS),
    ("bad onError", workflow("w", {**ONE, "onError": "explode"}), "blocks[0].onError"),
    ("unknown root key", {**workflow(), "colour": "red"}, "colour"),
    ("unknown block key", workflow("w", {**ONE, "when": "now"}), "blocks[0].when"),
    ("unknown trigger", {**workflow(), "trigger": {"type": "carrier-pigeon"}}, "trigger.type"),
    ("missing trigger", {"name": "w", "blocks": []}, "trigger"),
    ("block id not a UUID", workflow("w", {**ONE, "id": "abc"}), "blocks[0].id"),
    ("huge integer", workflow("w", transform("a", 10**30)), EXPR),
    ("cron on a webhook", {**workflow(), "trigger": {"type": "webhook", "cron": "* * * * *"}},
     "trigger.cron"),
    ("event on a webhook", {**workflow(), "trigger": {"type": "webhook", "event": "x"}},
     "trigger.event"),
    ("event without a name", {**workflow(), "trigger": {"type": "event"}}, "trigger.event"),
    ("empty event name", {**workflow(), "trigger": {"type": "event", "event": " "}},
     "trigger.event"),
    ("schedule without cron", {**workflow(), "trigger": {"type": "schedule"}}, "trigger.cron"),
    ("bad cron", {**workflow(), "trigger": {"type": "schedule", "cron": "every monday"}},
     "trigger.cron"),
    ("cron out of range", {**workflow(), "trigger": {"type": "schedule", "cron": "61 * * * *"}},
     "trigger.cron"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("definition", "path"), [(d, p) for _, d, p in PROBLEMS], ids=[i for i, _, _ in PROBLEMS]
)
def test_each_problem_is_400_with_its_path(api: Api, definition: dict[str, Any], path: str) -> None:
    body = assert_error(api.post("/workflows", json=definition), 400)
    assert body["error"] == "invalid_request"
    assert path in [problem["path"] for problem in body["errors"]], body
    assert path in body["message"]
    assert api.get("/workflows").json() == {"data": []}


def test_every_problem_is_listed_in_one_answer(api: Api) -> None:
    definition = {
        "trigger": {"type": "webhook"},
        "colour": "red",
        "blocks": [
            {"name": "a", "connector": "ftp", "config": {}},
            transform("b", "{{ foo[ }}"),
            transform("b", "{{ blocks.later.x }}"),
            {"name": "c", "connector": "http", "config": {"method": "GET"}, "extra": True,
             "retry": {"attempts": 99}, "onError": "explode"},
            transform("later", "{{ 1 }}"),
        ],
    }  # fmt: skip
    body = assert_error(api.post("/workflows", json=definition), 400)
    assert set(body) == {"error", "message", "status", "errors"}
    for problem in body["errors"]:
        assert set(problem) == {"path", "message"}
        assert problem["message"]
    assert {problem["path"] for problem in body["errors"]} == {
        "name", "colour", "blocks[0].connector", "blocks[1].config.expression", "blocks[2].name",
        "blocks[2].config.expression", "blocks[3].config.url", "blocks[3].retry.attempts",
        "blocks[3].onError", "blocks[3].extra",
    }  # fmt: skip


def test_invalid_replacement_keeps_the_current_version(api: Api) -> None:
    workflow_id = api.create_workflow(workflow())
    bad = workflow("sync", {"name": "a", "connector": "http", "config": {}})
    body = assert_error(api.put(f"/workflows/{workflow_id}", json=bad), 400)
    assert [problem["path"] for problem in body["errors"]] == ["blocks[0].config.url"]
    assert api.get(f"/workflows/{workflow_id}").json()["data"]["version"] == 1
    assert api.get(f"/workflows/{workflow_id}/versions").json()["data"][-1]["version"] == 1


# --- versions ----------------------------------------------------------------------


def block_ids(api: Api, workflow_id: str) -> dict[str, str]:
    blocks = api.get(f"/workflows/{workflow_id}").json()["data"]["blocks"]
    return {block["name"]: block["id"] for block in blocks}


def test_put_makes_a_new_version_and_keeps_block_ids(api: Api) -> None:
    given = str(uuid.uuid4())
    first = workflow("sync", transform("a", "{{ 1 }}"), transform("b", "{{ 2 }}"))
    workflow_id = api.create_workflow(first)
    v1 = block_ids(api, workflow_id)
    assert set(v1) == {"trigger", "a", "b"}
    for block_id in v1.values():
        uuid.UUID(block_id)

    second = workflow(
        "sync",
        transform("b", "{{ 20 }}"),
        transform("new", "{{ 3 }}"),
        {**transform("a", "{{ blocks.b }}"), "id": given},
    )
    response = api.put(f"/workflows/{workflow_id}", json=second)
    assert response.status_code == 200, response.text
    assert response.json() == {"workflowId": workflow_id, "version": 2}
    v2 = block_ids(api, workflow_id)
    assert v2["trigger"] == v1["trigger"]
    assert v2["b"] == v1["b"]
    assert v2["a"] == given
    assert v2["new"] not in v1.values()
    third = api.put(f"/workflows/{workflow_id}", json=workflow("sync", transform("new", "{{ 4 }}")))
    assert third.json() == {"workflowId": workflow_id, "version": 3}
    assert block_ids(api, workflow_id) == {"trigger": v1["trigger"], "new": v2["new"]}


def test_versions_are_listed(api: Api) -> None:
    workflow_id = api.create_workflow(workflow())
    api.put(f"/workflows/{workflow_id}", json=workflow("sync", transform("out", "{{ 2 }}")))
    api.put("/workflows/sync", json=workflow("sync", transform("out", "{{ 3 }}")))
    body = api.get(f"/workflows/{workflow_id}/versions").json()
    assert [entry["version"] for entry in body["data"]] == [1, 2, 3]
    for entry in body["data"]:
        assert set(entry) == {"version", "createdAt"}
        assert TIMESTAMP.match(entry["createdAt"])
    stamps = [entry["createdAt"] for entry in body["data"]]
    assert stamps == sorted(stamps)


# --- listing and reading -----------------------------------------------------------


def test_list_and_get_shapes(api: Api) -> None:
    user_id = api.create_user("ada")
    workflow_id = api.create_workflow(workflow("sync", transform("a", "{{ 1 }}")))
    api.create_workflow(workflow("other"))
    api.activate(user_id, workflow_id)

    listed = api.get("/workflows", params={"userId": user_id}).json()
    assert list(listed) == ["data"]
    assert [entry["name"] for entry in listed["data"]] == ["sync", "other"]
    mine, other = listed["data"]
    assert set(mine) >= SUMMARY_KEYS
    assert mine["workflowId"] == workflow_id
    assert (mine["version"], mine["installedVersion"], mine["active"]) == (1, 1, True)
    assert (other["installedVersion"], other["active"]) == (None, False)
    assert TIMESTAMP.match(mine["createdAt"])
    assert TIMESTAMP.match(mine["updatedAt"])
    assert [(b["name"], b["type"]) for b in mine["blocks"]] == [
        ("trigger", "webhook"),
        ("a", "transform"),
    ]
    for block in mine["blocks"]:
        assert set(block) >= {"id", "name", "type"}

    one = api.get(f"/workflows/{workflow_id}", params={"userId": "ada"}).json()
    assert list(one) == ["data"]
    assert one["data"] == mine
    anonymous = api.get(f"/workflows/{workflow_id}").json()["data"]
    assert (anonymous["installedVersion"], anonymous["active"]) == (None, False)


@pytest.mark.parametrize("ref", [MISSING_ID, "nope"])
def test_unknown_workflow_is_404(api: Api, ref: str) -> None:
    assert_error(api.get(f"/workflows/{ref}"), 404)
    assert_error(api.put(f"/workflows/{ref}", json=workflow()), 404)
    assert_error(api.delete(f"/workflows/{ref}"), 404)
    assert_error(api.get(f"/workflows/{ref}/versions"), 404)
    assert_error(api.get(f"/workflows/{ref}/users"), 404)


# --- activation, running, deletion ------------------------------------------------------


@pytest.mark.parametrize("key", ["workflowId", "workflowName"])
def test_activate_by_id_or_name(api: Api, key: str) -> None:
    user_id = api.create_user("ada")
    workflow_id = api.create_workflow(workflow())
    ref = workflow_id if key == "workflowId" else "sync"
    response = api.put("/workflows/activate", json={"userId": "ada", key: ref})
    assert response.status_code == 200
    assert response.json() == {"activated": True}
    summary = api.get(f"/workflows/{workflow_id}", params={"userId": user_id}).json()["data"]
    assert (summary["active"], summary["installedVersion"]) == (True, 1)
    assert output(api.wait_for(workflow_id, api.run(user_id, workflow_id))) == "v1"


def test_activate_needs_a_workflow(api: Api) -> None:
    api.create_user("ada")
    api.create_workflow(workflow())
    assert_error(api.put("/workflows/activate", json={"userId": "ada"}), 400)
    assert_error(api.put("/workflows/activate", json={"workflowId": "sync"}), 400)
    assert_error(api.put("/workflows/activate", json={"userId": "ada", "workflowId": "x"}), 404)
    assert_error(api.put("/workflows/activate", json={"userId": "bob", "workflowId": "sync"}), 404)


def test_deactivated_workflow_does_not_run(api: Api) -> None:
    user_id = api.create_user("ada")
    workflow_id = api.create_workflow(workflow())
    body = {"userId": user_id, "workflowName": "sync"}
    assert_error(api.post("/run/workflow", json=body), 400)  # never activated
    api.activate(user_id, workflow_id)
    response = api.put("/workflows/deactivate", json=body)
    assert response.status_code == 200
    assert response.json() == {"deactivated": True}
    assert api.get("/workflows", params={"userId": user_id}).json()["data"][0]["active"] is False

    refused = api.post("/run/workflow", json={**body, "data": {"x": 1}})
    assert assert_error(refused, 400)["error"] == "invalid_request"
    assert api.logs(workflow_id) == []
    analytics = api.get(f"/workflows/{workflow_id}/analytics").json()
    assert analytics["totalWorkflowRuns"] == 0

    api.activate(user_id, workflow_id)
    execution_id = api.run(user_id, workflow_id)
    assert [log["executionId"] for log in api.logs(workflow_id)] == [execution_id]


def test_delete_for_one_user_uninstalls_only_for_them(api: Api) -> None:
    ada, bob = api.create_user("ada"), api.create_user("bob")
    workflow_id = api.create_workflow(workflow())
    api.activate(ada, workflow_id)
    api.activate(bob, workflow_id)
    response = api.delete(f"/workflows/{workflow_id}", params={"userId": "ada"})
    assert response.status_code == 200
    assert response.json() == {"deleted": True}

    users = api.get(f"/workflows/{workflow_id}/users").json()["data"]
    assert [user["userId"] for user in users] == [bob]
    assert (
        api.get(f"/workflows/{workflow_id}", params={"userId": ada}).json()["data"][
            "installedVersion"
        ]
        is None
    )
    assert_error(api.post("/run/workflow", json={"userId": ada, "workflowId": workflow_id}), 400)
    assert api.wait_for(workflow_id, api.run(bob, workflow_id))["finished"] is True


def test_delete_without_user_deletes_the_workflow(api: Api) -> None:
    user_id, workflow_id = api.install(workflow())
    api.wait_for(workflow_id, api.run(user_id, workflow_id))
    response = api.delete(f"/workflows/{workflow_id}")
    assert response.status_code == 200
    assert response.json() == {"deleted": True}
    assert_error(api.get(f"/workflows/{workflow_id}"), 404)
    assert_error(api.get(f"/workflows/{workflow_id}/logs"), 404)
    assert_error(api.post("/run/workflow", json={"userId": user_id, "workflowName": "sync"}), 404)
    assert api.get("/workflows").json() == {"data": []}
    assert api.post("/workflows", json=workflow()).status_code == 201


def test_users_of_a_workflow(api: Api) -> None:
    ada = api.create_user("ada", "Ada Lovelace")
    bob = api.create_user("bob")
    api.create_user("carol")
    workflow_id = api.create_workflow(workflow())
    api.activate(ada, workflow_id)
    api.put(f"/workflows/{workflow_id}", json=workflow("sync", transform("out", "{{ 'v2' }}")))
    api.activate(bob, workflow_id)
    api.put("/workflows/deactivate", json={"userId": bob, "workflowId": workflow_id})

    body = api.get(f"/workflows/{workflow_id}/users").json()
    assert list(body) == ["data"]
    first, second = body["data"]
    assert set(first) == {
        "userId", "username", "fullName", "workflowActive", "installedVersion", "installedAt"
    }  # fmt: skip
    assert (first["userId"], first["username"], first["fullName"]) == (ada, "ada", "Ada Lovelace")
    assert (first["workflowActive"], first["installedVersion"]) == (True, 1)
    assert (second["userId"], second["workflowActive"], second["installedVersion"]) == (
        bob,
        False,
        2,
    )
    assert TIMESTAMP.match(first["installedAt"])


def test_users_stay_on_their_version_until_upgraded(api: Api) -> None:
    ada, bob = api.create_user("ada"), api.create_user("bob")
    workflow_id = api.create_workflow(workflow())
    api.activate(ada, workflow_id)
    api.put(f"/workflows/{workflow_id}", json=workflow("sync", transform("out", "{{ 'v2' }}")))
    api.activate(bob, workflow_id)

    def installed(user_id: str) -> tuple[int, int]:
        data = api.get(f"/workflows/{workflow_id}", params={"userId": user_id}).json()["data"]
        return data["version"], data["installedVersion"]

    def run(user_id: str) -> tuple[int, Any]:
        log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
        return log["workflowVersion"], output(log)

    assert installed(ada) == (2, 1)
    assert installed(bob) == (2, 2)
    assert run(ada) == (1, "v1")
    assert run(bob) == (2, "v2")

    response = api.put(f"/workflows/{workflow_id}/upgrade", params={"userId": "ada"})
    assert response.status_code == 200
    assert response.json() == {"upgraded": True}
    assert installed(ada) == (2, 2)
    assert run(ada) == (2, "v2")


def test_upgrade_needs_an_installed_user(api: Api) -> None:
    api.create_user("ada")
    workflow_id = api.create_workflow(workflow())
    assert_error(api.put(f"/workflows/{workflow_id}/upgrade"), 400)
    assert_error(api.put(f"/workflows/{workflow_id}/upgrade", params={"userId": "ada"}), 404)
    assert_error(api.put(f"/workflows/{workflow_id}/upgrade", params={"userId": "bob"}), 404)
