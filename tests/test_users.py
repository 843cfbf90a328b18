"""/users: the tenant's end users."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import Api
from tests.test_protocol import MISSING_ID, assert_error

OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def echo_workflow(name: str = "echo") -> dict[str, Any]:
    return {
        "name": name,
        "trigger": {"type": "webhook"},
        "blocks": [{"name": "t", "connector": "transform", "config": {"expression": "{{ 1 }}"}}],
    }


def test_create_answers_201_with_a_24_hex_id(api: Api) -> None:
    response = api.post("/users", json={"username": "ada", "fullName": "Ada Lovelace"})
    assert response.status_code == 201
    body = response.json()
    assert list(body) == ["userId"]
    assert OBJECT_ID.match(body["userId"])
    other = api.create_user("bob")
    assert other != body["userId"]
    assert OBJECT_ID.match(other)


def test_create_without_full_name(api: Api) -> None:
    user_id = api.create_user("ada")
    assert api.get(f"/users/{user_id}").json() == {
        "userId": user_id,
        "username": "ada",
        "fullName": None,
    }


def test_duplicate_username_is_409(api: Api) -> None:
    user_id = api.create_user("ada", "Ada Lovelace")
    response = api.post("/users", json={"username": "ada", "fullName": "Impostor"})
    assert assert_error(response, 409)["error"] == "conflict"
    assert api.get("/users/ada").json()["fullName"] == "Ada Lovelace"
    assert [u["userId"] for u in api.get("/users").json()["data"]] == [user_id]


@pytest.mark.parametrize(
    "body",
    [{}, {"username": ""}, {"fullName": "No Name"}, {"username": None}, {"username": 7}],
)
def test_missing_or_empty_username_is_400(api: Api, body: dict[str, Any]) -> None:
    response = api.post("/users", json=body)
    assert "username" in assert_error(response, 400)["message"]
    assert api.get("/users").json() == {"data": []}


def test_list_shape_and_order(api: Api) -> None:
    ada = api.create_user("ada", "Ada Lovelace")
    bob = api.create_user("bob")
    body = api.get("/users").json()
    assert list(body) == ["data"]
    assert [user["userId"] for user in body["data"]] == [ada, bob]
    first = body["data"][0]
    assert set(first) == {"userId", "username", "fullName", "createdAt"}
    assert (first["username"], first["fullName"]) == ("ada", "Ada Lovelace")
    assert TIMESTAMP.match(first["createdAt"])
    assert body["data"][1]["fullName"] is None


def test_list_pages(api: Api) -> None:
    ids = [api.create_user(f"user{n}") for n in range(5)]
    pages = [api.get("/users", params={"limit": 2, "page": p}).json()["data"] for p in (1, 2, 3, 4)]
    assert [len(page) for page in pages] == [2, 2, 1, 0]
    assert [user["userId"] for page in pages for user in page] == ids
    assert len(api.get("/users", params={"limit": 3}).json()["data"]) == 3
    assert len(api.get("/users").json()["data"]) == 5


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": "x"}, {"page": 0}, {"page": "y"}])
def test_list_refuses_bad_paging(api: Api, params: dict[str, Any]) -> None:
    assert_error(api.get("/users", params=params), 400)


def test_get_is_flat_by_id_and_by_username(api: Api) -> None:
    user_id = api.create_user("ada", "Ada Lovelace")
    expected = {"userId": user_id, "username": "ada", "fullName": "Ada Lovelace"}
    assert api.get(f"/users/{user_id}").json() == expected
    assert api.get("/users/ada").json() == expected


@pytest.mark.parametrize("ref", [MISSING_ID, "nobody"])
def test_get_unknown_user_is_404(api: Api, ref: str) -> None:
    api.create_user("ada")
    assert assert_error(api.get(f"/users/{ref}"), 404)["error"] == "not_found"


def test_update_full_name_and_username(api: Api) -> None:
    user_id = api.create_user("ada", "Ada Lovelace")
    response = api.put(f"/users/{user_id}", json={"fullName": "Ada King"})
    assert response.status_code == 200, response.text
    assert response.json() == {"userId": user_id, "username": "ada", "fullName": "Ada King"}

    response = api.put("/users/ada", json={"username": "countess"})
    assert response.json() == {"userId": user_id, "username": "countess", "fullName": "Ada King"}
    assert api.get("/users/countess").json()["userId"] == user_id
    assert_error(api.get("/users/ada"), 404)

    both = api.put(f"/users/{user_id}", json={"username": "lovelace", "fullName": "A. L."})
    assert both.json() == {"userId": user_id, "username": "lovelace", "fullName": "A. L."}
    assert api.get(f"/users/{user_id}").json() == both.json()


def test_update_with_an_empty_body_changes_nothing(api: Api) -> None:
    user_id = api.create_user("ada", "Ada Lovelace")
    response = api.put(f"/users/{user_id}", json={})
    assert response.status_code == 200
    assert response.json() == {"userId": user_id, "username": "ada", "fullName": "Ada Lovelace"}


def test_update_to_a_taken_username_is_409(api: Api) -> None:
    ada = api.create_user("ada", "Ada Lovelace")
    api.create_user("bob")
    assert_error(api.put(f"/users/{ada}", json={"username": "bob"}), 409)
    assert api.get(f"/users/{ada}").json()["username"] == "ada"
    same = api.put(f"/users/{ada}", json={"username": "ada"})
    assert same.status_code == 200


def test_update_to_an_empty_username_is_400(api: Api) -> None:
    ada = api.create_user("ada")
    assert_error(api.put(f"/users/{ada}", json={"username": ""}), 400)
    assert api.get(f"/users/{ada}").json()["username"] == "ada"


def test_update_unknown_user_is_404(api: Api) -> None:
    assert_error(api.put(f"/users/{MISSING_ID}", json={"fullName": "x"}), 404)


@pytest.mark.parametrize("by", ["id", "username"])
def test_delete_then_404(api: Api, by: str) -> None:
    user_id = api.create_user("ada")
    bob = api.create_user("bob")
    response = api.delete(f"/users/{user_id if by == 'id' else 'ada'}")
    assert response.status_code == 200
    assert response.json() == {"message": "Success"}
    assert_error(api.get(f"/users/{user_id}"), 404)
    assert_error(api.get("/users/ada"), 404)
    assert_error(api.delete(f"/users/{user_id}"), 404)
    assert [u["userId"] for u in api.get("/users").json()["data"]] == [bob]
    assert api.post("/users", json={"username": "ada"}).status_code == 201


def test_deleted_user_no_longer_runs_workflows(api: Api) -> None:
    user_id, workflow_id = api.install(echo_workflow())
    api.delete(f"/users/{user_id}")
    response = api.post("/run/workflow", json={"userId": user_id, "workflowId": workflow_id})
    assert_error(response, 404)
    assert api.get(f"/workflows/{workflow_id}/users").json() == {"data": []}


def test_deleting_a_user_erases_their_logs_and_no_one_elses(api: Api) -> None:
    workflow_id = api.create_workflow(echo_workflow())
    ada, bob = api.create_user("ada"), api.create_user("bob")
    for user_id in (ada, bob):
        api.activate(user_id, workflow_id)
        api.wait_for(workflow_id, api.run(user_id, workflow_id))

    assert api.delete(f"/users/{ada}").json() == {"message": "Success"}

    assert [log["userId"] for log in api.logs(workflow_id)] == [bob]
    assert api.get(f"/workflows/{workflow_id}/analytics").json()["totalWorkflowRuns"] == 1


def test_erase_logs_erases_only_that_users_logs(api: Api) -> None:
    first = api.create_workflow(echo_workflow("first"))
    second = api.create_workflow(echo_workflow("second"))
    ada, bob = api.create_user("ada"), api.create_user("bob")
    runs: dict[tuple[str, str], list[str]] = {}
    for user_id in (ada, bob):
        for workflow_id in (first, second):
            api.activate(user_id, workflow_id)
            runs[user_id, workflow_id] = [api.run(user_id, workflow_id) for _ in range(2)]
            for execution_id in runs[user_id, workflow_id]:
                api.wait_for(workflow_id, execution_id)

    response = api.delete("/users/ada/logs")
    assert response.status_code == 200
    assert response.json() == {"message": "Success"}

    for workflow_id in (first, second):
        assert api.logs(workflow_id, userId=ada) == []
        remaining = sorted(log["executionId"] for log in api.logs(workflow_id))
        assert remaining == sorted(runs[bob, workflow_id])
        assert (
            api.get(f"/workflows/{workflow_id}/analytics", params={"userId": ada}).json()[
                "totalWorkflowRuns"
            ]
            == 0
        )
    assert api.get(f"/users/{ada}").status_code == 200
    rerun = api.post(f"/workflows/{first}/rerun/{runs[ada, first][0]}")
    assert_error(rerun, 404)
    execution_id = api.run(ada, first)
    assert api.wait_for(first, execution_id)["finished"] is True


def test_erase_logs_of_unknown_user_is_404(api: Api) -> None:
    assert_error(api.delete(f"/users/{MISSING_ID}/logs"), 404)
    assert_error(api.delete("/users/nobody/logs"), 404)
