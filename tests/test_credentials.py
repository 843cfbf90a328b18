"""Credentials: stored encrypted, used by http blocks by name, never shown anywhere in clear."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.conftest import TIMEOUT, Api, Server, api_client, settings_for
from tests.processes import ServeProcess, environment, solder
from tests.test_protocol import MISSING_ID, assert_error
from tests.upstream import Reply, Request, Upstream

TOKEN = "tok_S3CR3T_bearer_9f8e7d"
PASSWORD = "pw_S3CR3T_basic_1a2b3c"
API_KEY = "key_S3CR3T_header_4d5e6f"
QUERY_KEY = "key_S3CR3T_query_7a8b9c"
SECRETS = {
    "bearer": {"token": TOKEN},
    "basic": {"username": "ada", "password": PASSWORD},
    "apiKey": {"key": API_KEY, "in": "header", "name": "X-Api-Key"},
    "apiKey-query": {"key": QUERY_KEY, "in": "query", "name": "api_key"},
}


def every_form() -> list[str]:
    """Each secret and each form of it that could be echoed back."""
    pair = f"ada:{PASSWORD}"
    return [TOKEN, PASSWORD, API_KEY, QUERY_KEY, pair, base64.b64encode(pair.encode()).decode()]


def credential(kind: str, name: str | None = None) -> dict[str, Any]:
    return {"type": kind.split("-")[0], "name": name or kind, "data": SECRETS[kind]}


def call_with(upstream: Upstream, name: str, path: str = "/echo") -> dict[str, Any]:
    return {
        "name": f"Call with {name}",
        "trigger": {"type": "webhook"},
        "blocks": [
            {
                "name": "call",
                "connector": "http",
                "config": {"url": f"{upstream.base_url}{path}", "credential": name},
                "onError": "continue",
            },
            {
                "name": "copy",
                "connector": "transform",
                "config": {"expression": "{{ blocks.call }}"},
            },
        ],
    }


def echo(status: int) -> Any:
    """An upstream that answers with everything it was sent, auth included."""

    def answer(request: Request) -> Reply:
        return Reply(status, {"headers": request.headers, "query": request.query})

    return answer


def test_create_list_delete(api: Api) -> None:
    user_id = api.create_user("ada")
    created = api.post(f"/users/{user_id}/credentials", json=credential("bearer", "crm"))
    assert created.status_code == 201, created.text
    credential_id = created.json()["credentialId"]
    assert len(credential_id) == 24
    listed = api.get("/users/ada/credentials").json()["data"]
    assert [{k: c[k] for k in ("credentialId", "type", "name")} for c in listed] == [
        {"credentialId": credential_id, "type": "bearer", "name": "crm"}
    ]
    assert TOKEN not in json.dumps(listed)
    assert set(listed[0]) == {"credentialId", "type", "name", "createdAt"}
    gone = api.delete(f"/users/{user_id}/credentials/{credential_id}")
    assert gone.json() == {"message": "Success"}
    assert api.get(f"/users/{user_id}/credentials").json() == {"data": []}
    assert_error(api.delete(f"/users/{user_id}/credentials/{credential_id}"), 404)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"type": "oauth", "name": "x", "data": {}}, "type must be one of"),
        ({"type": "bearer", "name": "x", "data": {}}, "data.token: required"),
        ({"type": "basic", "name": "x", "data": {"username": "a"}}, "data.password: required"),
        (
            {"type": "apiKey", "name": "x", "data": {"key": "k", "in": "body", "name": "n"}},
            "data.in",
        ),
        ({"type": "bearer", "name": "x", "data": {"token": "t", "extra": 1}}, "data.extra"),
        ({"type": "bearer", "name": "", "data": {"token": "t"}}, "name"),
        ({"type": "bearer", "name": "x", "data": "t"}, "data must be an object"),
    ],
)
def test_a_bad_credential_is_refused_with_what_is_wrong(
    api: Api, body: dict[str, Any], says: str
) -> None:
    api.create_user("ada")
    assert says in assert_error(api.post("/users/ada/credentials", json=body), 400)["message"]


def test_a_duplicate_name_is_409_and_an_unknown_user_404(api: Api) -> None:
    api.create_user("ada")
    assert api.post("/users/ada/credentials", json=credential("bearer")).status_code == 201
    assert_error(api.post("/users/ada/credentials", json=credential("bearer")), 409)
    assert_error(api.post(f"/users/{MISSING_ID}/credentials", json=credential("bearer")), 404)
    assert_error(api.get("/users/nobody/credentials"), 404)


def test_another_tenant_cannot_see_or_delete_them(server: Server, api: Api) -> None:
    api.create_user("ada")
    credential_id = api.post("/users/ada/credentials", json=credential("bearer")).json()[
        "credentialId"
    ]
    with api_client(server, tenant="other") as other:
        assert_error(other.get("/users/ada/credentials"), 404)
        assert_error(other.delete(f"/users/ada/credentials/{credential_id}"), 404)
        assert_error(other.post("/users/ada/credentials", json=credential("basic")), 404)
    assert len(api.get("/users/ada/credentials").json()["data"]) == 1


def test_deleting_a_user_deletes_their_credentials(api: Api, upstream: Upstream) -> None:
    upstream.route("/echo", echo(200))
    user_id = api.create_user("ada")
    api.post(f"/users/{user_id}/credentials", json=credential("bearer"))
    api.delete(f"/users/{user_id}")
    again = api.create_user("ada")
    assert api.get(f"/users/{again}/credentials").json() == {"data": []}


@pytest.mark.parametrize("kind", list(SECRETS))
def test_each_type_reaches_the_other_app_where_it_belongs(
    api: Api, upstream: Upstream, kind: str
) -> None:
    upstream.route("/echo", echo(200))
    user_id, workflow_id = api.install(call_with(upstream, kind))
    api.post(f"/users/{user_id}/credentials", json=credential(kind))

    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))

    assert log["finished"] is True
    sent = upstream.requests[0]
    if kind == "bearer":
        assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    elif kind == "basic":
        expected = base64.b64encode(f"ada:{PASSWORD}".encode()).decode()
        assert sent.headers["authorization"] == f"Basic {expected}"
    elif kind == "apiKey":
        assert sent.headers["x-api-key"] == API_KEY
    else:
        assert sent.query["api_key"] == [QUERY_KEY]
    text = json.dumps(log)
    assert not [s for s in every_form() if s in text], "the echoed secret is in the log"
    assert "[redacted]" in text
    assert log["inputs"][1]["data"]["credential"] == kind


def test_a_missing_credential_fails_the_block_and_says_how_to_fix_it(
    api: Api, upstream: Upstream
) -> None:
    user_id, workflow_id = api.install(call_with(upstream, "crm"))
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    message = log["results"][1]["error"]["message"]
    assert "no credential named 'crm'" in message
    assert "POST /users/{userId}/credentials" in message
    assert upstream.requests == []


def test_secrets_appear_nowhere_in_clear(tmp_path: Path, upstream: Upstream) -> None:
    """Upstreams echo the auth back, in success and in failure; then every byte is scanned."""
    upstream.route("/echo", echo(200))
    upstream.route("/fail", echo(500))
    upstream.route("/denied", echo(401))
    env = environment(tmp_path, SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true")
    key = solder("keys", "create", "--tenant", "acme", env=env).stdout.splitlines()[-1]
    log_file = tmp_path / "serve.log"
    server = ServeProcess(env, log_file)
    answers: list[str] = []
    try:
        with Api(
            base_url=server.base_url, headers={"Authorization": f"bearer {key}"}, timeout=TIMEOUT
        ) as api:
            user_id = api.create_user("ada")
            for kind in SECRETS:
                answers.append(
                    api.post(f"/users/{user_id}/credentials", json=credential(kind)).text
                )
            for path in ("/echo", "/fail", "/denied"):
                for kind in SECRETS:
                    definition = call_with(upstream, kind, path)
                    definition["name"] = f"{kind} {path}"
                    workflow_id = api.create_workflow(definition)
                    api.activate(user_id, workflow_id)
                    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
                    answers += [
                        json.dumps(log),
                        api.get(f"/workflows/{workflow_id}/errors").text,
                        api.get(f"/workflows/{workflow_id}").text,
                    ]
            answers.append(api.get(f"/users/{user_id}/credentials").text)
    finally:
        server.terminate()
    assert len(upstream.requests) == 3 * len(SECRETS), "every call reached the upstream"
    echoed = json.dumps([r.headers for r in upstream.requests]) + str(
        [r.query for r in upstream.requests]
    )
    on_the_wire = [TOKEN, API_KEY, QUERY_KEY, base64.b64encode(f"ada:{PASSWORD}".encode()).decode()]
    assert all(s in echoed for s in on_the_wire), "the upstream did see every secret"
    places = {"API answers": "\n".join(answers).encode(), "server output": log_file.read_bytes()}
    for file in tmp_path.iterdir():
        if file.name.startswith("solder.db"):
            places[file.name] = file.read_bytes()
    assert "solder.db" in places
    for place, content in places.items():
        for secret in every_form():
            assert secret.encode() not in content, f"{secret!r} found in clear in {place}"
            assert base64.b64encode(secret.encode()) not in content, f"base64 {secret!r} in {place}"


def test_credentials_stored_under_another_key_fail_clearly(
    tmp_path: Path, upstream: Upstream
) -> None:

    upstream.route("/echo", echo(200))
    data_dir = tmp_path / "shared"
    first = Server(settings_for(data_dir, secret_key=Fernet.generate_key().decode()))
    first.start()
    try:
        with api_client(first) as api:
            user_id, workflow_id = api.install(call_with(upstream, "bearer"))
            api.post(f"/users/{user_id}/credentials", json=credential("bearer"))
            key = api.headers["Authorization"]
    finally:
        first.stop()
    second = Server(settings_for(data_dir, secret_key=Fernet.generate_key().decode()))
    second.start()
    try:
        with Api(base_url=second.base_url, headers={"Authorization": key}, timeout=TIMEOUT) as api:
            log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    finally:
        second.stop()
    assert "SOLDER_SECRET_KEY" in log["results"][1]["error"]["message"]
    assert upstream.requests == []


def test_without_a_secret_key_one_is_generated_owner_only_with_a_warning(tmp_path: Path) -> None:
    env = environment(tmp_path)
    server = ServeProcess(env, tmp_path / "serve.log")
    server.terminate()
    key_file = tmp_path / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    Fernet(key_file.read_text().strip().encode())  # a usable key
    assert "SOLDER_SECRET_KEY" in (tmp_path / "serve.log").read_text()
    again = ServeProcess(env, tmp_path / "again.log")
    again.terminate()
    assert "generated a secret key" not in (tmp_path / "again.log").read_text(), "reused"


def test_a_malformed_secret_key_is_a_clear_error(tmp_path: Path) -> None:
    result = solder("serve", env=environment(tmp_path, SOLDER_SECRET_KEY="hunter2"))
    assert result.returncode == 1
    assert "SOLDER_SECRET_KEY" in result.stderr
    assert "solder secret-key" in result.stderr
    assert "hunter2" not in result.stderr
