"""The conventions every endpoint shares: auth, API version, error shape, body limits, docs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import TIMEOUT, Api, Server

VERSION = "2025-09"
MISSING_ID = "0123456789abcdef01234567"


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """`response` is an error in the one shape: {"error", "message", "status"} (+ extra keys)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body: dict[str, Any] = response.json()
    assert {"error", "message", "status"} <= set(body), body
    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert isinstance(body["message"], str)
    assert body["message"]
    assert "Traceback" not in response.text
    return body


def raw_client(server: Server, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=TIMEOUT)


# --- authentication ----------------------------------------------------------------


def test_missing_authorization_is_401(server: Server) -> None:
    with raw_client(server) as client:
        body = assert_error(client.get("/users"), 401)
    assert body["error"] == "unauthorized"


@pytest.mark.parametrize(
    "authorization", ["bearer sk_not_a_real_key", "bearer", "Basic dXNlcjpwYXNz", "sk_bare"]
)
def test_unknown_or_malformed_key_is_401(server: Server, authorization: str) -> None:
    with raw_client(server, Authorization=authorization) as client:
        assert_error(client.get("/users"), 401)
        assert_error(client.post("/users", json={"username": "eve"}), 401)


@pytest.mark.parametrize(
    "authorization", ["bearer sk_not_a_real_key", "bearer", "Basic dXNlcjpwYXNz", "sk_bare", None]
)
def test_logs_with_bad_parameters_and_no_valid_key_are_401_not_400(
    server: Server, authorization: str | None
) -> None:
    """The logs endpoint reads its parameters itself: it still checks the key first."""
    headers = {} if authorization is None else {"Authorization": authorization}
    with raw_client(server, **headers) as client:
        for query in ("limit=0", "page=x", "cursor=nonsense", "order=sideways"):
            assert_error(client.get(f"/workflows/{MISSING_ID}/logs?{query}"), 401)


@pytest.mark.parametrize("body", [b"{not json", b'{"username": 5}', b"[]"])
def test_a_bad_body_without_a_key_is_401_not_400(server: Server, body: bytes) -> None:
    headers = {"content-type": "application/json"}
    with raw_client(server) as client:
        assert_error(client.post("/users", content=body, headers=headers), 401)
        assert_error(client.post("/run/workflow", content=body, headers=headers), 401)
    with raw_client(server, Authorization=f"bearer {server.new_key('acme')}") as client:
        assert_error(client.post("/users", content=body, headers=headers), 400)


@pytest.mark.parametrize("scheme", ["Bearer", "BEARER", "bearer", "bEaReR"])
def test_auth_scheme_is_case_insensitive(server: Server, scheme: str) -> None:
    key = server.new_key("acme")
    with raw_client(server, Authorization=f"{scheme} {key}") as client:
        response = client.get("/users")
    assert response.status_code == 200, response.text
    assert response.json() == {"data": []}


def test_health_needs_no_auth(server: Server) -> None:
    with raw_client(server) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.headers["x-api-version"] == VERSION


# --- API version -------------------------------------------------------------------


def test_missing_version_header_is_treated_as_current(server: Server) -> None:
    key = server.new_key("acme")
    with raw_client(server, Authorization=f"bearer {key}") as client:
        created = client.post("/users", json={"username": "ada"})
        listed = client.get("/users")
    assert created.status_code == 201, created.text
    assert [user["username"] for user in listed.json()["data"]] == ["ada"]
    assert listed.headers["x-api-version"] == VERSION


@pytest.mark.parametrize("version", ["2024-03", "2023-01", "2025-10", "latest", ""])
def test_other_version_header_is_400_naming_the_supported_one(api: Api, version: str) -> None:
    response = api.get("/users", headers={"x-api-version": version})
    body = assert_error(response, 400)
    assert VERSION in body["message"]
    assert api.get("/users").json() == {"data": []}


def test_every_response_carries_the_version_header(server: Server, api: Api) -> None:
    with raw_client(server) as anonymous:
        responses = [
            anonymous.get("/health"),
            anonymous.get("/users"),
            anonymous.get("/openapi.json"),
        ]
    user_id = api.create_user("ada")
    responses += [
        api.get("/users"),
        api.get(f"/users/{user_id}"),
        api.post("/users", json={"username": "ada"}),
        api.get("/no/such/route"),
        api.delete("/health"),
        api.get("/users", headers={"x-api-version": "1999-01"}),
        api.get(f"/2023-01/users/{user_id}"),
        api.get("/1999-01/users"),
        api.post("/users", content=b"{not json", headers={"content-type": "application/json"}),
        # The logs are answered before FastAPI's routing (api/logs.py): the same protocol.
        api.get(f"/workflows/{MISSING_ID}/logs"),
        api.get(f"/workflows/{MISSING_ID}/logs", params={"limit": 0}),
        api.get(f"/2024-03/workflows/{MISSING_ID}/logs"),
        api.get(f"/workflows/{MISSING_ID}/logs", headers={"x-api-version": "1999-01"}),
    ]
    assert [r.status_code for r in responses] == [
        200, 401, 200, 200, 200, 409, 404, 405, 400, 200, 400, 400, 404, 400, 404, 400
    ]  # fmt: skip
    for response in responses:
        assert response.headers.get("x-api-version") == VERSION, response.request.url


# --- version path prefixes ----------------------------------------------------------


def test_version_prefix_serves_users_like_unprefixed(api: Api) -> None:
    user_id = api.create_user("ada", "Ada Lovelace")
    for prefix in ("/2023-01", "/2024-03", "/2025-09"):
        response = api.get(f"{prefix}/users/{user_id}")
        assert response.status_code == 200, response.text
        assert response.json() == api.get(f"/users/{user_id}").json()
    assert_error(api.get(f"/2023-01/users/{MISSING_ID}"), 404)
    created = api.post("/2023-01/users", json={"username": "bob"})
    assert created.status_code == 201, created.text
    assert api.get("/users/bob").json()["userId"] == created.json()["userId"]


def test_version_prefix_serves_logs_like_unprefixed(api: Api) -> None:
    user_id = api.create_user("ada")
    workflow_id = api.create_workflow(
        {
            "name": "echo",
            "trigger": {"type": "webhook"},
            "blocks": [
                {"name": "t", "connector": "transform", "config": {"expression": "{{ 1 }}"}}
            ],
        }
    )
    api.activate(user_id, workflow_id)
    execution_id = api.run(user_id, workflow_id, {"n": 1})
    log = api.wait_for(workflow_id, execution_id)
    response = api.get(f"/2024-03/workflows/{workflow_id}/logs", params={"userId": user_id})
    assert response.status_code == 200, response.text
    assert response.json() == {"data": [log], "nextCursor": None}
    assert_error(api.get(f"/2024-03/workflows/{workflow_id}/logs", params={"limit": 0}), 400)


@pytest.mark.parametrize("path", ["/1999-01/users", "/2030-12/workflows", "/2023-13/users"])
def test_unknown_version_prefix_is_400(api: Api, path: str) -> None:
    assert_error(api.get(path), 400)


# --- errors in the one shape ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/users/x/y/z", "/workflows/abc/nonsense", "/"])
def test_unknown_route_is_404_in_shape(api: Api, path: str) -> None:
    assert assert_error(api.get(path), 404)["error"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/users"), ("PATCH", "/users/ada"), ("POST", "/workflows/activate"),
     ("GET", "/run/workflow"), ("PUT", "/health"), ("POST", "/workflows/abc/logs"),
     ("DELETE", "/workflows/abc/logs")],
)  # fmt: skip
def test_wrong_method_is_405_in_shape(api: Api, method: str, path: str) -> None:
    assert_error(api.request(method, path), 405)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/users"), ("PUT", "/users/ada"), ("POST", "/workflows"),
     ("PUT", "/workflows/WORKFLOW"), ("PUT", "/workflows/activate"),
     ("PUT", "/workflows/deactivate"), ("POST", "/run/workflow")],
)  # fmt: skip
@pytest.mark.parametrize("body", [b"{not json", b"", b'{"username": "x",}', b"\xff\xfe"])
def test_invalid_json_body_is_400_in_shape(api: Api, method: str, path: str, body: bytes) -> None:
    api.create_user("ada")
    workflow_id = api.create_workflow({"name": "w", "trigger": {"type": "webhook"}})
    path = path.replace("WORKFLOW", workflow_id)
    response = api.request(method, path, content=body, headers={"content-type": "application/json"})
    assert_error(response, 400)


@pytest.mark.parametrize("content_type", [None, "text/plain"])
def test_a_json_body_not_labelled_json_is_400_and_changes_nothing(
    api: Api, content_type: str | None
) -> None:
    """FastAPI reads a body as JSON only under a JSON `Content-Type` (since 0.132, the
    lowest version Solder admits): anything else is refused, in the one shape, before
    anything is done with it."""
    user_id, workflow_id = api.install({"name": "w", "trigger": {"type": "webhook"}})
    headers = {} if content_type is None else {"content-type": content_type}
    bodies = {
        "/users": {"username": "grace"},
        "/run/workflow": {"userId": user_id, "workflowId": workflow_id, "data": {}},
    }
    for path, body in bodies.items():
        sent = api.request("POST", path, content=json.dumps(body).encode(), headers=headers)
        assert_error(sent, 400)
    assert [user["username"] for user in api.get("/users").json()["data"]] == ["ada"]
    assert api.logs(workflow_id) == []
    labelled = {"content-type": "application/json"}
    for path, body in bodies.items():
        sent = api.request("POST", path, content=json.dumps(body).encode(), headers=labelled)
        assert sent.status_code in (200, 201), "the same body, labelled, is taken"


# --- body size ----------------------------------------------------------------------


@pytest.fixture
def small_server(make_server: Callable[..., Server]) -> Server:
    return make_server(max_body_bytes=2048)


def test_body_over_the_limit_is_413_with_content_length(small_server: Server) -> None:
    with raw_client(small_server, Authorization=f"bearer {small_server.new_key('acme')}") as c:
        fits = c.post("/users", json={"username": "ada", "fullName": "x" * 200})
        too_big = c.post("/users", json={"username": "bob", "fullName": "x" * 3000})
        listed = c.get("/users").json()["data"]
    assert fits.status_code == 201, fits.text
    assert assert_error(too_big, 413)["error"] == "payload_too_large"
    assert too_big.headers["x-api-version"] == VERSION
    assert [user["username"] for user in listed] == ["ada"]


def test_body_over_the_limit_is_413_when_chunked(small_server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"username": "bob", "fullName": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    def small() -> Iterator[bytes]:
        yield b'{"username": '
        yield b'"ada"}'

    headers = {"content-type": "application/json"}
    with raw_client(small_server, Authorization=f"bearer {small_server.new_key('acme')}") as c:
        too_big = c.post("/users", content=chunks(), headers=headers)
        assert "content-length" not in too_big.request.headers
        assert_error(too_big, 413)
        fits = c.post("/users", content=small(), headers=headers)
        assert fits.status_code == 201, fits.text
        assert [user["username"] for user in c.get("/users").json()["data"]] == ["ada"]


# --- documentation ----------------------------------------------------------------------


def test_openapi_lists_the_logs_endpoint(server: Server) -> None:
    with raw_client(server) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    operation = document["paths"]["/workflows/{workflowId}/logs"]["get"]
    # The handler reads its query itself (the hot path), yet the docs still list it all.
    parameters = {(p["in"], p["name"]) for p in operation["parameters"]}
    assert parameters == {("path", "workflowId")} | {
        ("query", name)
        for name in ("userId", "page", "limit", "pageSize", "order", "sortOrder", "cursor")
    }
    assert all(p.get("description") for p in operation["parameters"] if p["in"] == "query")
    assert operation["security"] == [{"HTTPBearer": []}]
    assert "HTTPBearer" in document["components"]["securitySchemes"]


def test_docs_serve_html(server: Server) -> None:
    with raw_client(server) as client:
        response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()


# --- no 500 for bad input -------------------------------------------------------------

HUGE = 10**40


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


MALFORMED: list[Any] = [
    [], [1, 2], "text", None, 0, HUGE, True,
    {"username": HUGE}, {"username": ["ada"]}, {"username": {"a": 1}}, {"username": None},
    {"userId": HUGE, "workflowId": HUGE, "data": HUGE},
    {"userId": "ada", "workflowId": "WORKFLOW", "data": {"n": HUGE}},
    {"userId": "ada", "workflowId": "WORKFLOW", "data": [1]},
    {"userId": "ada", "workflowId": "WORKFLOW", "data": nested(150)},
    {"userId": "ada", "workflowName": 5}, {"userId": ["ada"], "workflowId": "WORKFLOW"},
    {"name": HUGE, "trigger": "webhook", "blocks": {"a": 1}},
    {"name": "n", "trigger": {"type": "webhook", "id": HUGE}, "blocks": [HUGE]},
    {"name": "n", "trigger": {"type": "webhook"},
     "blocks": [{"name": "b", "connector": "transform", "config": {"expression": HUGE}}]},
    {"name": "n", "trigger": {"type": "webhook"},
     "blocks": [{"name": "b", "connector": "http", "config": {"url": HUGE, "timeoutMs": HUGE},
                 "retry": {"attempts": HUGE, "delayMs": -HUGE}}]},
    {"name": "n", "trigger": {"type": "webhook"},
     "blocks": [{"name": "b", "connector": ["http"], "config": [], "onError": {}}]},
    {"name": "n", "trigger": {"type": "webhook"},
     "blocks": [{"name": "b", "connector": "transform", "config": {"expression": nested(150)}}]},
]  # fmt: skip
ENDPOINTS = [
    ("POST", "/users"),
    ("PUT", "/users/ada"),
    ("POST", "/workflows"),
    ("PUT", "/workflows/WORKFLOW"),
    ("PUT", "/workflows/activate"),
    ("PUT", "/workflows/deactivate"),
    ("POST", "/run/workflow"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_malformed_bodies_never_cause_500(api: Api, method: str, path: str) -> None:
    user_id, workflow_id = api.install({"name": "w", "trigger": {"type": "webhook"}})
    statuses = set()
    for body in MALFORMED:
        content = json.dumps(body).replace("WORKFLOW", workflow_id).encode()
        response = api.request(
            method,
            path.replace("WORKFLOW", workflow_id),
            content=content,
            headers={"content-type": "application/json"},
        )
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert_error(response, response.status_code)
        statuses.add(response.status_code)
    assert 400 in statuses
    assert api.get(f"/users/{user_id}").status_code == 200


@pytest.mark.parametrize(
    "params",
    [{"page": str(HUGE)}, {"limit": str(HUGE)}, {"page": "1e3"}, {"limit": "-0"},
     {"userId": "x" * 5000}, {"order": "\u00e9"}],
)  # fmt: skip
def test_malformed_query_parameters_never_cause_500(api: Api, params: dict[str, str]) -> None:
    workflow_id = api.create_workflow({"name": "w", "trigger": {"type": "webhook"}})
    for path in (f"/workflows/{workflow_id}/logs", f"/workflows/{workflow_id}/errors", "/users"):
        response = api.get(path, params=params)
        assert response.status_code < 500, (path, response.text)
        if response.status_code >= 400:
            assert_error(response, response.status_code)


def test_payload_solder_cannot_store_is_400_and_does_not_run(api: Api) -> None:
    user_id = api.create_user("ada")
    workflow_id = api.create_workflow(
        {
            "name": "w",
            "trigger": {"type": "webhook"},
            "blocks": [
                {
                    "name": "t",
                    "connector": "transform",
                    "config": {"expression": "{{ trigger.deep }}"},
                }
            ],
        }
    )
    api.activate(user_id, workflow_id)
    for data in ({"n": HUGE}, {"n": -HUGE}, nested(60)):
        run = {"userId": user_id, "workflowId": workflow_id, "data": data}
        assert "data" in assert_error(api.post("/run/workflow", json=run), 400)["message"]
    assert api.logs(workflow_id) == []
    # The largest integers and the deepest nesting accepted do run, and are logged intact.
    edge = {"max": 2**64 - 1, "min": -(2**63), "deep": nested(49)}
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id, edge))
    assert log["finished"] is True
    assert log["results"][0]["data"][0][0]["json"] == edge
    assert log["results"][1]["data"][0][0]["json"] == nested(49)
