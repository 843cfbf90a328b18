"""The shortcuts that serve a run and a logs page before FastAPI's routing answer every
request, well-formed or not, exactly as the routes alone do."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from solder import keys
from solder.errors import Unavailable
from solder.store import queries, queue
from tests import databases
from tests.conftest import TIMEOUT, Api, Server, api_client
from tests.test_log_positions import assert_pages


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"d": value}
    return value


WEBHOOK = {
    "name": "Welcome",
    "trigger": {"type": "webhook"},
    "blocks": [{"name": "echo", "connector": "transform", "config": {"expression": "{{ 1 }}"}}],
}
ON_SIGNUP = {**WEBHOOK, "name": "On signup", "trigger": {"type": "event", "event": "signup"}}
RUN = {"userId": "ada", "workflowName": "Welcome", "data": {"n": 1}}
BY_IDS = {"userId": "<ada>", "workflowId": "<welcome>", "data": {"n": 2}}
EVENT = {"event": "signup", "userId": "ada", "data": {"plan": "pro"}}
JSON = {"content-type": "application/json"}
NO_KEY = {"authorization": ""}
WRONG_KEY = {"authorization": "bearer sk_nobody"}

# (path, body, headers): every request is sent to both servers, in this order.
REQUESTS: list[tuple[str, bytes, dict[str, str]]] = [
    ("/run/workflow", orjson.dumps(RUN), JSON),
    ("/run/workflow", orjson.dumps(RUN), {"content-type": "application/json; charset=utf-8"}),
    ("/run/workflow", orjson.dumps(RUN), {}),  # no content type: read as JSON
    ("/2025-09/run/workflow", orjson.dumps(RUN), JSON),
    ("/run/workflow", orjson.dumps({**RUN, "extra": [1, 2]}), JSON),
    ("/run/workflow", orjson.dumps({"userId": "ada", "workflowName": "Welcome"}), JSON),
    ("/run/workflow", orjson.dumps(RUN), {**JSON, "idempotency-key": "once"}),
    ("/run/workflow", orjson.dumps(RUN), {**JSON, "idempotency-key": "once"}),
    ("/run/workflow", orjson.dumps({**RUN, "data": {}}), {**JSON, "idempotency-key": "once"}),
    ("/run/workflow", orjson.dumps(RUN), {**JSON, "idempotency-key": ""}),
    ("/run/workflow", orjson.dumps(RUN), {**JSON, "idempotency-key": "k" * 256}),
    ("/run/workflow", orjson.dumps(RUN), {"content-type": "text/plain"}),
    ("/run/workflow", orjson.dumps(RUN), {"content-type": "application/x-www-form-urlencoded"}),
    ("/run/workflow", b"", JSON),
    ("/run/workflow", b"{", JSON),
    ("/run/workflow", b"[]", JSON),
    ("/run/workflow", b"null", JSON),
    ("/run/workflow", b"\xff\xfe", JSON),
    ("/run/workflow", b'{"userId": "ada", "workflowName": "Welcome", "data": {"x": NaN}}', JSON),
    ("/run/workflow", b'{"userId": "ada", "workflowName": "Welcome", "data": {"x": 1e999}}', JSON),
    (
        "/run/workflow",
        b'{"userId": "ada", "workflowName": "Welcome", "data": {"x": 1' + b"0" * 30 + b"}}",
        JSON,
    ),
    ("/run/workflow", orjson.dumps({**RUN, "data": {"deep": _deep(120)}}), JSON),
    ("/run/workflow", orjson.dumps({"workflowName": "Welcome"}), JSON),
    ("/run/workflow", orjson.dumps({**RUN, "userId": ""}), JSON),
    ("/run/workflow", orjson.dumps({**RUN, "userId": 7}), JSON),
    ("/run/workflow", orjson.dumps({**RUN, "data": [1]}), JSON),
    ("/run/workflow", orjson.dumps({"userId": "ada", "data": {}}), JSON),
    ("/run/workflow", orjson.dumps({**RUN, "workflowName": "Nothing"}), JSON),
    ("/run/workflow", orjson.dumps({**RUN, "userId": "nobody"}), JSON),
    ("/run/workflow", orjson.dumps({**RUN, "workflowName": "On signup"}), JSON),
    ("/run/workflow", orjson.dumps(RUN), {**JSON, **NO_KEY}),
    ("/run/workflow", orjson.dumps(RUN), {**JSON, **WRONG_KEY}),
    ("/run/workflow", b"{", {**JSON, **WRONG_KEY}),
    ("/run/workflow", orjson.dumps(RUN), {**JSON, "x-api-version": "2023-01"}),
    ("/run/workflow/", orjson.dumps(RUN), JSON),
    ("/run/event", orjson.dumps(EVENT), JSON),
    ("/run/event", orjson.dumps({**EVENT, "event": "nobody-awaits-this"}), JSON),
    ("/run/event", orjson.dumps({**EVENT, "event": ""}), JSON),
    ("/run/event", orjson.dumps({**EVENT, "event": "e" * 256}), JSON),
    ("/run/event", orjson.dumps({"userId": "ada"}), JSON),
    ("/run/event", orjson.dumps({**EVENT, "userId": "nobody"}), JSON),
    ("/run/event", orjson.dumps(EVENT), {**JSON, **WRONG_KEY}),
    ("/run/event", orjson.dumps(EVENT), {**JSON, "idempotency-key": "event-once"}),
    ("/run/event", orjson.dumps(EVENT), {**JSON, "idempotency-key": "event-once"}),
    # By ids, as clients send them: the key is looked up with the target in one read.
    ("/run/workflow", orjson.dumps(BY_IDS), JSON),
    ("/run/workflow", orjson.dumps({**BY_IDS, "workflowName": "On signup"}), JSON),
    ("/run/workflow", orjson.dumps(BY_IDS), {**JSON, "idempotency-key": "ids-once"}),
    ("/run/workflow", orjson.dumps(BY_IDS), {**JSON, "idempotency-key": "ids-once"}),
    ("/run/workflow", orjson.dumps(BY_IDS), {**JSON, **NO_KEY}),
    ("/run/workflow", orjson.dumps(BY_IDS), {**JSON, **WRONG_KEY}),
    ("/run/workflow", orjson.dumps(BY_IDS), {**JSON, "authorization": "bearer <revoked>"}),
    ("/run/workflow", orjson.dumps(BY_IDS), {**JSON, "authorization": "bearer <globex>"}),
    ("/run/workflow", orjson.dumps({**BY_IDS, "workflowId": "<on-signup>"}), JSON),
    ("/run/workflow", orjson.dumps({**BY_IDS, "workflowId": "<inactive>"}), JSON),
    ("/run/workflow", orjson.dumps({**BY_IDS, "workflowId": "0" * 24}), JSON),
    ("/run/workflow", orjson.dumps({**BY_IDS, "userId": "f" * 24}), JSON),
    ("/run/workflow", orjson.dumps({**BY_IDS, "data": {"deep": _deep(120)}}), JSON),
    ("/run/workflow", orjson.dumps({**BY_IDS, "data": {"deep": _deep(120)}}), WRONG_KEY),
]
# Each server's own ids and keys, by its URL, for the placeholders above.
_OWN: dict[str, dict[str, str]] = {}

# The ids a run answer holds, which differ between servers: one, or a list of them.
_IDS = re.compile(rb'("executionIds?":)(\[[^\]]*\]|"[^"]*")')


@pytest.fixture
def twins(make_server: Callable[..., Server]) -> Iterator[tuple[Api, Api]]:
    """Two servers alike, one with the shortcuts and one without, each with a user `ada`
    who has a webhook workflow `Welcome` and one awaiting the event `signup`."""
    servers = make_server(), make_server(shortcuts=False)
    with api_client(servers[0]) as fast, api_client(servers[1]) as routed:
        for server, api in zip(servers, (fast, routed), strict=True):
            user_id = api.create_user("ada")
            own = {"<ada>": user_id, "<globex>": server.new_key("globex")}
            for name, definition in (("<welcome>", WEBHOOK), ("<on-signup>", ON_SIGNUP)):
                own[name] = api.create_workflow(definition)
                api.activate(user_id, own[name])
            own["<inactive>"] = api.create_workflow({**WEBHOOK, "name": "Inactive"})
            own["<revoked>"] = revoked = server.new_key("acme")
            databases.execute(
                server.settings.data_dir,
                f"UPDATE api_keys SET revoked_at = 1 WHERE key_hash = '{keys.hash_key(revoked)}'",
            )
            _OWN[str(api.base_url)] = own
        yield fast, routed


def answer(api: Api, path: str, body: bytes, headers: dict[str, str]) -> tuple[Any, ...]:
    """What a client sees of an answer, its ids (which differ between servers) masked."""
    own = _OWN.get(str(api.base_url), {})
    for placeholder, value in own.items():
        body = body.replace(placeholder.encode(), value.encode())
        headers = {name: sent.replace(placeholder, value) for name, sent in headers.items()}
    sent = dict(api.headers)
    if "authorization" in headers:
        sent.pop("authorization")
    sent.update({name: value for name, value in headers.items() if value})
    response = httpx.post(f"{api.base_url}{path}", content=body, headers=sent)
    return (
        response.status_code,
        response.headers.get("content-type"),
        response.headers.get("x-api-version"),
        _own_masked(_IDS.sub(_masked, response.content), own),
    )


def _own_masked(content: bytes, own: dict[str, str]) -> bytes:
    """The server's own ids in an answer (an error naming the user, say) as placeholders."""
    for placeholder, value in own.items():
        content = content.replace(value.encode(), placeholder.encode())
    return content


def _masked(match: re.Match[bytes]) -> bytes:
    return match.group(1) + re.sub(rb'"[^"]*"', b'"<id>"', match.group(2))


def test_every_run_request_is_answered_as_the_routes_answer_it(twins: tuple[Api, Api]) -> None:
    fast, routed = twins
    for path, body, headers in REQUESTS:
        expected = answer(routed, path, body, headers)
        assert answer(fast, path, body, headers) == expected, (path, body, headers)
    # Both ran the same runs, with the same trigger data and results.
    assert _runs(fast) == _runs(routed)
    assert len(_runs(fast)) > 5


def test_an_idempotent_run_through_the_shortcut_runs_once(twins: tuple[Api, Api]) -> None:
    fast, _ = twins
    headers = {**JSON, "idempotency-key": "signup-ada"}
    first = fast.post("/run/workflow", content=orjson.dumps(RUN), headers=headers)
    again = fast.post("/run/workflow", content=orjson.dumps(RUN), headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert len(_runs(fast)) == 1


def _runs(api: Api) -> list[tuple[str, Any, Any]]:
    """(workflow, trigger data, the block's output) of every run the server accepted,
    once all have ended, sorted."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        logs = [
            (workflow["name"], log)
            for workflow in api.get("/workflows").json()["data"]
            for log in _all_logs(api, workflow["workflowId"])
        ]
        if all(log["stoppedAt"] is not None for _, log in logs):
            break
        assert time.monotonic() < deadline, "the runs did not end"
        time.sleep(0.05)
    return sorted(
        (
            (
                name,
                log["results"][0]["data"][0][0]["json"],
                [item["json"] for item in log["results"][1]["data"][0]],
            )
            for name, log in logs
        ),
        key=repr,
    )


def _all_logs(api: Api, workflow_id: str) -> list[dict[str, Any]]:
    logs: list[dict[str, Any]] = []
    page = 1
    while True:
        batch = api.logs(workflow_id, limit=30, page=page)
        logs.extend(batch)
        if len(batch) < 30:
            return logs
        page += 1


@pytest.mark.parametrize("by_ids", [False, True])
@pytest.mark.parametrize("shortcuts", [True, False])
def test_a_run_while_the_database_is_down_is_a_503_after_one_look(
    make_server: Callable[..., Server],
    monkeypatch: pytest.MonkeyPatch,
    shortcuts: bool,
    by_ids: bool,
) -> None:
    """Each look waits for the database (its pool's timeout, 5 s on PostgreSQL): a run
    request is refused after one, with or without the shortcut, by names or by ids."""
    server = make_server(shortcuts=shortcuts)
    with api_client(server) as api:
        user_id, workflow_id = api.create_user("ada"), api.create_workflow(WEBHOOK)
        api.activate(user_id, workflow_id)
        looks: list[str] = []

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            looks.append(repr((args, kwargs)))
            raise Unavailable("the database is unavailable; retry shortly")

        monkeypatch.setattr(keys, "authenticate", unreachable)
        monkeypatch.setattr(queries, "keyed_webhook_target", unreachable)
        monkeypatch.setattr(queue, "queue_by_keys", unreachable)  # PostgreSQL's, in one
        run = {**RUN, "userId": user_id, "workflowId": workflow_id} if by_ids else RUN
        response = api.post("/run/workflow", content=orjson.dumps(run), headers=JSON)
    assert response.status_code == 503
    assert response.json() == {
        "error": "unavailable",
        "message": "the database is unavailable; retry shortly",
        "status": 503,
    }
    assert len(looks) == 1


def test_a_run_by_ids_looks_its_key_up_with_its_target(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual request: one read finds the key's tenant and the target; a bad key is
    still refused as the routes refuse it."""
    with api_client(server) as api:
        user_id, workflow_id = api.create_user("ada"), api.create_workflow(WEBHOOK)
        api.activate(user_id, workflow_id)
        looked_up: list[str] = []
        real = keys.authenticate

        async def authenticate(conn: Any, key: str) -> Any:
            looked_up.append(key)
            return await real(conn, key)

        monkeypatch.setattr(keys, "authenticate", authenticate)
        run = {"userId": user_id, "workflowId": workflow_id, "data": {"n": 3}}
        accepted = api.post("/run/workflow", content=orjson.dumps(run), headers=JSON)
        assert accepted.status_code == 200, accepted.text
        assert looked_up == [], "no lookup of the key alone"
        log = api.wait_for(workflow_id, accepted.json()["executionId"])
        assert log["results"][0]["data"][0][0]["json"] == {"n": 3}

        refused = api.post(
            "/run/workflow", content=orjson.dumps(run), headers={**JSON, **WRONG_KEY}
        )
        assert refused.status_code == 401
        assert refused.json()["message"] == "unknown or revoked API key"
        assert len(api.logs(workflow_id)) == 1, "the refused run queued nothing"


def test_a_refused_run_by_ids_takes_no_place_in_the_logs(server: Server) -> None:
    """A run by ids whose accept finds no target (a user without the workflow, an
    inactive installation, another trigger, a wrong key) writes nothing before the
    routes' refusal: no run comes of it, and the pages by number of the runs accepted
    around the refusals stay exact, of all users and of the user's."""
    with api_client(server) as api:
        ada, welcome = api.install(WEBHOOK)
        grace = api.create_user("grace")  # without the workflow
        signup = api.create_workflow(ON_SIGNUP)
        api.activate(ada, signup)
        # (the run, its headers, whether its installation is deactivated first)
        refusals = [
            ({"userId": grace, "workflowId": welcome}, JSON, False),
            ({"userId": ada, "workflowId": signup}, JSON, False),
            ({"userId": ada, "workflowId": welcome}, {**JSON, **WRONG_KEY}, False),
            ({"userId": ada, "workflowId": welcome}, JSON, True),
        ]
        history: list[str] = []
        for run, headers, deactivate in refusals:
            history.append(api.run(ada, welcome, {"n": len(history)}))
            if deactivate:
                deactivated = api.put("/workflows/deactivate", json=run)
                assert deactivated.status_code == 200, deactivated.text
            refused = api.post("/run/workflow", content=orjson.dumps(run), headers=headers)
            assert 400 <= refused.status_code < 500, (run, refused.text)
            assert set(refused.json()) == {"error", "message", "status"}
        api.activate(ada, welcome)
        history.append(api.run(ada, welcome, {"n": len(history)}))
        for execution_id in history:
            api.wait_for(welcome, execution_id)
        assert_pages(api, welcome, history, None)
        assert_pages(api, welcome, history, ada)
        assert api.logs(signup) == [], "no run of the event's workflow"
