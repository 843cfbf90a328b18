"""POST /run/event: an event starts every active workflow of its user that awaits it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api
from tests.test_protocol import assert_error

TRIGGERED = "Event successfully triggered"


def on_event(name: str, event: str) -> dict[str, Any]:
    """A workflow run by `event` that outputs its trigger payload."""
    return {
        "name": name,
        "trigger": {"type": "event", "event": event},
        "blocks": [
            {"name": "echo", "connector": "transform", "config": {"expression": "{{ trigger }}"}}
        ],
    }


def send(api: Api, user: str, event: str, data: Any = None, **headers: str) -> list[str]:
    body: dict[str, Any] = {"event": event, "userId": user}
    if data is not None:
        body["data"] = data
    response = api.post("/run/event", json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["message"] == TRIGGERED
    started: list[str] = answer["executionIds"]
    return started


def execution_ids(api: Api, workflow_id: str, user_id: str | None = None) -> set[str]:
    params = {} if user_id is None else {"userId": user_id}
    return {log["executionId"] for log in api.logs(workflow_id, **params)}


def test_an_event_starts_every_workflow_of_its_user_that_awaits_it(api: Api) -> None:
    ada, bob = api.create_user("ada"), api.create_user("bob")
    welcome = api.create_workflow(on_event("Welcome", "signup"))
    crm = api.create_workflow(on_event("Add to CRM", "signup"))
    other_event = api.create_workflow(on_event("Goodbye", "churn"))
    paused = api.create_workflow(on_event("Paused", "signup"))
    webhook = api.create_workflow({**on_event("Webhook", ""), "trigger": {"type": "webhook"}})
    bobs_own = api.create_workflow(on_event("Bob's", "signup"))
    for workflow_id in (welcome, crm, other_event, paused, webhook):
        api.activate(ada, workflow_id)
    for workflow_id in (welcome, bobs_own):
        api.activate(bob, workflow_id)
    deactivated = api.put("/workflows/deactivate", json={"userId": ada, "workflowId": paused})
    assert deactivated.status_code == 200

    data = {"email": "ada@example.com", "plan": {"name": "pro", "seats": 3}}
    started = send(api, "ada", "signup", data)

    assert len(started) == len(set(started)) == 2
    for workflow_id in (welcome, crm):
        [execution_id] = execution_ids(api, workflow_id)
        assert execution_id in started
        log = api.wait_for(workflow_id, execution_id)
        assert log["finished"] is True
        assert log["userId"] == ada
        assert log["results"][0]["data"][0][0]["json"] == data
        assert log["results"][1]["data"][0][0]["json"] == data
    for workflow_id in (other_event, paused, webhook, bobs_own):
        assert api.logs(workflow_id) == []
    assert execution_ids(api, welcome, bob) == set()


def test_an_event_nobody_awaits_starts_nothing(api: Api) -> None:
    api.create_user("ada")
    response = api.post("/run/event", json={"event": "signup", "userId": "ada", "data": {}})
    assert response.status_code == 200
    assert response.json() == {"message": TRIGGERED, "executionIds": []}


def test_data_defaults_to_an_empty_payload(api: Api) -> None:
    user_id, workflow_id = api.install(on_event("Welcome", "signup"))
    [execution_id] = send(api, user_id, "signup")
    log = api.wait_for(workflow_id, execution_id)
    assert log["results"][0]["data"][0][0]["json"] == {}


def test_an_unknown_user_is_404(api: Api) -> None:
    api.install(on_event("Welcome", "signup"))
    body = {"event": "signup", "userId": "nobody", "data": {}}
    assert assert_error(api.post("/run/event", json=body), 404)["error"] == "not_found"


def test_each_user_follows_the_trigger_of_their_installed_version(api: Api) -> None:
    ada, bob = api.create_user("ada"), api.create_user("bob")
    workflow_id = api.create_workflow(on_event("Welcome", "signup"))
    api.activate(ada, workflow_id)
    replaced = api.put(f"/workflows/{workflow_id}", json=on_event("Welcome", "signed_up"))
    assert replaced.status_code == 200, replaced.text
    api.activate(bob, workflow_id)

    assert send(api, ada, "signed_up") == []
    assert send(api, bob, "signup") == []
    [ada_run] = send(api, ada, "signup")
    [bob_run] = send(api, bob, "signed_up")
    assert api.wait_for(workflow_id, ada_run)["workflowVersion"] == 1
    assert api.wait_for(workflow_id, bob_run)["workflowVersion"] == 2

    upgraded = api.put(f"/workflows/{workflow_id}/upgrade", params={"userId": ada})
    assert upgraded.status_code == 200
    assert send(api, ada, "signup") == []
    [upgraded_run] = send(api, ada, "signed_up")
    assert api.wait_for(workflow_id, upgraded_run)["workflowVersion"] == 2


def test_event_names_match_exactly(api: Api) -> None:
    user_id, _ = api.install(on_event("Welcome", "signup"))
    assert send(api, user_id, "Signup") == []
    assert send(api, user_id, "signup ") == []


def test_an_idempotency_key_makes_a_retried_event_start_its_workflows_once(api: Api) -> None:
    user_id, workflow_id = api.install(on_event("Welcome", "signup"))
    api.activate(user_id, api.create_workflow(on_event("Add to CRM", "signup")))
    body = {"event": "signup", "userId": user_id, "data": {"n": 1}}
    headers = {"Idempotency-Key": "signup-ada"}

    first = api.post("/run/event", json=body, headers=headers)
    again = api.post("/run/event", json=body, headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert len(first.json()["executionIds"]) == 2
    assert len(api.logs(workflow_id)) == 1
    reused = api.post("/run/event", json={**body, "data": {"n": 2}}, headers=headers)
    assert "Idempotency-Key" in assert_error(reused, 400)["message"]
    assert len(send(api, user_id, "signup", {"n": 1}, **{"Idempotency-Key": "another"})) == 2
    assert len(api.logs(workflow_id)) == 2


def test_event_triggered_workflows_are_not_run_by_run_workflow(api: Api) -> None:
    user_id, workflow_id = api.install(on_event("Welcome", "signup"))
    body = {"userId": user_id, "workflowId": workflow_id, "data": {}}
    refused = assert_error(api.post("/run/workflow", json=body), 400)
    assert "POST /run/workflow" in refused["message"]
    assert api.logs(workflow_id) == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"userId": "ada", "data": {}}, "event: required"),
        ({"event": "", "userId": "ada"}, "event"),
        ({"event": "x" * 256, "userId": "ada"}, "event"),
        ({"event": 5, "userId": "ada"}, "event"),
        ({"event": "signup", "data": {}}, "userId: required"),
        ({"event": "signup", "userId": "ada", "data": [1]}, "data"),
        ({"event": "signup", "userId": "ada", "data": "x"}, "data"),
        ({"event": "signup", "userId": "ada", "data": {"n": 2**64}}, "data.n: integer out of"),
        ([{"event": "signup", "userId": "ada"}], "body"),
    ],
)
def test_a_bad_body_is_400(api: Api, body: Any, says: str) -> None:
    _, workflow_id = api.install(on_event("Welcome", "signup"))
    error = assert_error(api.post("/run/event", json=body), 400)
    assert error["error"] == "invalid_request"
    assert says in error["message"]
    assert api.logs(workflow_id) == []


def test_a_body_that_is_not_json_is_400(api: Api) -> None:
    api.create_user("ada")
    response = api.post(
        "/run/event", content=b"{event: signup", headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in assert_error(response, 400)["message"]


def test_an_event_workflow_cannot_be_run_as_a_webhook(api: Api) -> None:
    user_id, workflow_id = api.install(on_event("Welcome", "signup"))
    response = api.post("/run/workflow", json={"userId": user_id, "workflowId": workflow_id})
    body = assert_error(response, 400)
    assert "'event'" in body["message"]
    assert "not by a webhook" in body["message"]
    assert api.logs(workflow_id) == []
