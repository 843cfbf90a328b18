"""Tenant isolation: a key never sees, changes or runs another tenant's objects."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Api, Server, api_client
from tests.test_protocol import assert_error


def definition(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "trigger": {"type": "webhook"},
        "blocks": [{"name": "t", "connector": "transform", "config": {"expression": "{{ 1 }}"}}],
    }


@dataclass
class World:
    """Tenant A ("acme") with a user, a workflow and an ended execution; tenant B ("bolt")."""

    a: Api
    b: Api
    user_id: str
    workflow_id: str
    execution_id: str
    b_user_id: str
    b_workflow_id: str


@pytest.fixture
def world(server: Server, api: Api) -> Iterator[World]:
    user_id = api.create_user("ada", "Ada Lovelace")
    workflow_id = api.create_workflow(definition("sync"))
    api.activate(user_id, workflow_id)
    execution_id = api.run(user_id, workflow_id, {"secret": "acme-only"})
    api.wait_for(workflow_id, execution_id)
    with api_client(server, "bolt") as b:
        b_user_id = b.create_user("bea")
        b_workflow_id = b.create_workflow(definition("mine"))
        b.activate(b_user_id, b_workflow_id)
        yield World(api, b, user_id, workflow_id, execution_id, b_user_id, b_workflow_id)


def snapshot(w: World) -> dict[str, Any]:
    """Everything tenant A can see of its own objects."""
    a = w.a
    return {
        "users": a.get("/users").json(),
        "user": a.get(f"/users/{w.user_id}").json(),
        "workflows": a.get("/workflows", params={"userId": w.user_id}).json(),
        "versions": a.get(f"/workflows/{w.workflow_id}/versions").json(),
        "installs": a.get(f"/workflows/{w.workflow_id}/users").json(),
        "logs": a.logs(w.workflow_id, limit=30),
        "analytics": a.get(f"/workflows/{w.workflow_id}/analytics").json(),
    }


# (method, path, json body): <U>, <W>, <E> stand for A's user, workflow and execution ids.
CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/users/<U>", None),
    ("GET", "/users/ada", None),
    ("PUT", "/users/<U>", {"fullName": "Mallory"}),
    ("PUT", "/users/ada", {"username": "mallory"}),
    ("DELETE", "/users/<U>", None),
    ("DELETE", "/users/ada", None),
    ("DELETE", "/users/<U>/logs", None),
    ("GET", "/workflows/<W>", None),
    ("GET", "/workflows/sync", None),
    ("PUT", "/workflows/<W>", definition("hijacked")),
    ("PUT", "/workflows/sync", definition("hijacked")),
    ("DELETE", "/workflows/<W>", None),
    ("DELETE", "/workflows/<W>?userId=<U>", None),
    ("GET", "/workflows/<W>/logs", None),
    ("GET", "/workflows/sync/logs", None),
    ("GET", "/workflows/<W>/errors", None),
    ("GET", "/workflows/<W>/analytics", None),
    ("GET", "/workflows/<W>/versions", None),
    ("GET", "/workflows/<W>/users", None),
    ("POST", "/workflows/<W>/rerun/<E>", None),
    ("POST", "/workflows/<W>/rerun/<E>?userId=<U>", None),
    ("PUT", "/workflows/<W>/upgrade?userId=<U>", None),
    ("PUT", "/workflows/activate", {"userId": "<U>", "workflowId": "<W>"}),
    ("PUT", "/workflows/activate", {"userId": "ada", "workflowName": "sync"}),
    ("PUT", "/workflows/deactivate", {"userId": "<U>", "workflowId": "<W>"}),
    ("POST", "/run/workflow", {"userId": "<U>", "workflowId": "<W>", "data": {}}),
    ("POST", "/run/workflow", {"userId": "ada", "workflowName": "sync", "data": {}}),
]


def fill(value: Any, w: World) -> Any:
    if isinstance(value, str):
        ids = {"<U>": w.user_id, "<W>": w.workflow_id, "<E>": w.execution_id}
        for placeholder, real in ids.items():
            value = value.replace(placeholder, real)
        return value
    if isinstance(value, dict):
        return {key: fill(item, w) for key, item in value.items()}
    return value


def call(api: Api, method: str, path: str, body: Any, w: World) -> httpx.Response:
    return api.request(method, fill(path, w), json=None if body is None else fill(body, w))


@pytest.mark.parametrize(("method", "path", "body"), CALLS)
def test_other_tenant_gets_404_and_changes_nothing(
    world: World, method: str, path: str, body: Any
) -> None:
    before = snapshot(world)
    response = call(world.b, method, path, body, world)
    assert assert_error(response, 404)["error"] == "not_found"
    assert "Ada Lovelace" not in response.text
    assert "acme-only" not in response.text
    assert snapshot(world) == before


@pytest.mark.parametrize(("method", "path", "body"), CALLS)
def test_owner_can_make_the_same_calls(world: World, method: str, path: str, body: Any) -> None:
    """The calls above are real: the owning tenant gets an answer, not a 404."""
    response = call(world.a, method, path, body, world)
    assert response.status_code in (200, 201), response.text


@pytest.mark.parametrize(
    "body",
    [
        {"userId": "B_USER", "workflowId": "<W>"},
        {"userId": "B_USER", "workflowName": "sync"},
        {"userId": "<U>", "workflowId": "B_WORKFLOW"},
        {"userId": "ada", "workflowId": "B_WORKFLOW"},
    ],
)
@pytest.mark.parametrize("path", ["/workflows/activate", "/workflows/deactivate", "/run/workflow"])
def test_mixing_own_and_foreign_ids_is_404(world: World, path: str, body: dict[str, str]) -> None:
    ids = {"B_USER": world.b_user_id, "B_WORKFLOW": world.b_workflow_id}
    resolved = {key: ids.get(value, value) for key, value in body.items()}
    before = snapshot(world)
    method = "POST" if path.startswith("/run") else "PUT"
    response = call(world.b, method, path, {**resolved, "data": {}}, world)
    assert_error(response, 404)
    assert snapshot(world) == before
    assert world.b.logs(world.b_workflow_id) == []


def test_rerun_of_foreign_execution_under_own_workflow_is_404(world: World) -> None:
    path = f"/workflows/{world.b_workflow_id}/rerun/{world.execution_id}"
    assert_error(world.b.post(path), 404)
    assert_error(world.b.post(path, params={"userId": world.b_user_id}), 404)
    assert world.b.logs(world.b_workflow_id) == []
    assert len(world.a.logs(world.workflow_id)) == 1


def test_lists_show_only_own_objects(world: World) -> None:
    users = world.b.get("/users").json()["data"]
    assert [user["userId"] for user in users] == [world.b_user_id]
    workflows = world.b.get("/workflows").json()["data"]
    assert [workflow["workflowId"] for workflow in workflows] == [world.b_workflow_id]
    mine = world.b.get("/workflows", params={"userId": world.b_user_id}).json()["data"]
    assert [workflow["name"] for workflow in mine] == ["mine"]
    assert_error(world.b.get("/workflows", params={"userId": world.user_id}), 404)
    assert_error(world.b.get("/workflows", params={"userId": "ada"}), 404)
    assert [u["userId"] for u in world.a.get("/users").json()["data"]] == [world.user_id]


def test_logs_of_own_workflow_filtered_by_foreign_user_is_404(world: World) -> None:
    response = world.b.get(f"/workflows/{world.b_workflow_id}/logs", params={"userId": "ada"})
    assert_error(response, 404)
    response = world.b.get(
        f"/workflows/{world.b_workflow_id}/logs", params={"userId": world.user_id}
    )
    assert_error(response, 404)


def test_same_names_in_two_tenants_do_not_collide(world: World) -> None:
    """A username and a workflow name taken in tenant A are free in tenant B."""
    bolt_ada = world.b.create_user("ada", "Another Ada")
    assert bolt_ada != world.user_id
    bolt_sync = world.b.create_workflow(definition("sync"))
    assert bolt_sync != world.workflow_id
    assert world.b.get("/users/ada").json()["fullName"] == "Another Ada"
    assert world.a.get("/users/ada").json()["fullName"] == "Ada Lovelace"
    assert world.b.get("/workflows/sync").json()["data"]["workflowId"] == bolt_sync
    assert world.a.get("/workflows/sync").json()["data"]["workflowId"] == world.workflow_id
    world.b.activate(bolt_ada, bolt_sync)
    execution_id = world.b.run("ada", bolt_sync)
    world.b.wait_for(bolt_sync, execution_id)
    assert [log["executionId"] for log in world.a.logs(world.workflow_id)] == [world.execution_id]
    assert world.b.delete("/users/ada").json() == {"message": "Success"}
    assert world.a.get("/users/ada").status_code == 200


def test_foreign_user_still_exists_after_delete_attempts(world: World) -> None:
    assert_error(world.b.delete(f"/users/{world.user_id}"), 404)
    assert_error(world.b.delete(f"/users/{world.user_id}/logs"), 404)
    assert_error(world.b.delete(f"/workflows/{world.workflow_id}"), 404)
    assert world.a.get(f"/users/{world.user_id}").json()["username"] == "ada"
    assert world.a.get(f"/workflows/{world.workflow_id}").status_code == 200
    (log,) = world.a.logs(world.workflow_id)
    assert log["results"][0]["data"][0][0]["json"] == {"secret": "acme-only"}
