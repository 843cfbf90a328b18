"""Credentials: stored encrypted, used by http blocks by name, never shown anywhere in clear."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.fernet import Fernet

from solder.credentials import scrub
from tests import databases
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


def call_with(
    upstream: Upstream, name: str, path: str = "/echo", on_error: str = "continue"
) -> dict[str, Any]:
    """A call with the credential `name`, then a block that copies what it got.

    With `onError: stop` a failed call's response (the echo) is what the log records;
    with `continue` the log records the error message instead.
    """
    return {
        "name": f"Call with {name}",
        "trigger": {"type": "webhook"},
        "blocks": [
            {
                "name": "call",
                "connector": "http",
                "config": {"url": f"{upstream.base_url}{path}", "credential": name},
                "onError": on_error,
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
        # Sent in a header, where the HTTP client would refuse them only at run time.
        ({"type": "bearer", "name": "x", "data": {"token": "S3CR3T\nX"}}, "data.token: must be"),
        ({"type": "bearer", "name": "x", "data": {"token": "S3CR3T\u00e9"}}, "printable ASCII"),
        (
            {
                "type": "apiKey",
                "name": "x",
                "data": {"key": "S3CR3T\r", "in": "header", "name": "K"},
            },
            "data.key: must be printable ASCII",
        ),
        (
            {"type": "apiKey", "name": "x", "data": {"key": "k", "in": "header", "name": "X Key"}},
            "data.name: must be a valid HTTP header name",
        ),
        (
            {"type": "basic", "name": "x", "data": {"username": "a:b", "password": "p"}},
            "data.username: must not contain ':'",
        ),
    ],
)
def test_a_bad_credential_is_refused_with_what_is_wrong(
    api: Api, body: dict[str, Any], says: str
) -> None:
    api.create_user("ada")
    error = assert_error(api.post("/users/ada/credentials", json=body), 400)
    assert says in error["message"]
    assert "S3CR3T" not in json.dumps(error), "the refusal does not quote the secret"


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


def test_deleting_a_user_deletes_their_credentials(server: Server, api: Api) -> None:
    user_id = api.create_user("ada")
    api.post(f"/users/{user_id}/credentials", json=credential("bearer"))
    api.create_user("bob")
    api.post("/users/bob/credentials", json=credential("basic"))

    assert api.delete(f"/users/{user_id}").json() == {"message": "Success"}

    again = api.create_user("ada")
    assert api.get(f"/users/{again}/credentials").json() == {"data": []}
    left = databases.rows(server.settings.data_dir, "SELECT type FROM credentials")
    assert left == [("basic",)], "the deleted user's encrypted secret is gone from the database"


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
    assert "no credential named 'crm' for this user" in message
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
                    on_error = "continue" if path == "/echo" else "stop"
                    definition = call_with(upstream, kind, path, on_error)
                    definition["name"] = f"{kind} {path}"
                    workflow_id = api.create_workflow(definition)
                    api.activate(user_id, workflow_id)
                    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
                    recorded = json.dumps(log["results"][1]["data"])
                    assert "[redacted]" in recorded, f"the {path} echo was recorded, scrubbed"
                    answers += [
                        json.dumps(log),
                        api.get(f"/workflows/{workflow_id}/errors").text,
                        api.get(f"/workflows/{workflow_id}").text,
                    ]
            answers.append(api.get(f"/users/{user_id}/credentials").text)
        # The WAL holds the latest pages while the server runs; a clean stop removes it.
        wal = tmp_path / "solder.db-wal"
        serving_wal = wal.read_bytes() if wal.exists() else b""
    finally:
        server.terminate()
    assert len(upstream.requests) == 3 * len(SECRETS), "every call reached the upstream"
    echoed = json.dumps([r.headers for r in upstream.requests]) + str(
        [r.query for r in upstream.requests]
    )
    on_the_wire = [TOKEN, API_KEY, QUERY_KEY, base64.b64encode(f"ada:{PASSWORD}".encode()).decode()]
    assert all(s in echoed for s in on_the_wire), "the upstream did see every secret"
    places = {
        "API answers": "\n".join(answers).encode(),
        "server output": log_file.read_bytes(),
        "the WAL while serving": serving_wal,
    }
    stored = databases.stored_bytes(tmp_path)
    assert stored, "the database was read"
    places.update(stored)
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


def test_an_unusable_key_file_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("S3CR3T-almost-a-key\n")
    result = solder("serve", env=environment(tmp_path))
    said = " ".join(result.stderr.split())
    assert result.returncode == 1
    assert "secret key file" in said
    assert "no valid Fernet key" in said
    assert "SOLDER_SECRET_KEY" in said
    assert "Traceback" not in result.stderr + result.stdout
    assert "S3CR3T" not in result.stderr + result.stdout


# JSON escapes the quotes and the backslash; a URL escapes nearly all of the query key.
AWKWARD = {
    "bearer": {"token": 'tok_"S3CR3T"\\back/slash+=='},
    "apiKey-query": {"key": 'key S3CR3T+/=&"\u00e9', "in": "query", "name": "api_key"},
}


def test_secrets_that_json_and_urls_escape_are_redacted_too(api: Api, upstream: Upstream) -> None:
    def quote_request(request: Request) -> Reply:
        # An error page quoting the request as it arrived: the raw URL and the headers.
        return Reply(500, {"url": request.target, "headers": request.headers})

    upstream.route("/quote", quote_request)
    user_id = api.create_user("ada")
    for kind, data in AWKWARD.items():
        body = {"type": kind.split("-")[0], "name": kind, "data": data}
        assert api.post(f"/users/{user_id}/credentials", json=body).status_code == 201

        definition = {**call_with(upstream, kind, "/quote", "stop"), "name": kind}
        workflow_id = api.create_workflow(definition)
        api.activate(user_id, workflow_id)
        log = api.wait_for(workflow_id, api.run(user_id, workflow_id))

        sent = upstream.requests[-1]
        if kind == "bearer":
            assert sent.headers["authorization"] == f"Bearer {data['token']}"
        else:
            assert sent.query["api_key"] == [data["key"]]
            assert urlencode({"api_key": data["key"]}) in sent.target
        served = api.get(f"/workflows/{workflow_id}/logs").text
        assert "S3CR3T" not in served, "no part of the secret, in any escaping, is in the log"
        assert "[redacted]" in json.dumps(log["results"][1]["data"])


def test_scrub_replaces_each_form_whole_and_leaves_short_values() -> None:
    token = 'tok_"q"\\z'
    recorded = json.dumps({"auth": f"Bearer {token}", "echo": token, "n": "abc"})
    scrubbed = scrub(recorded, [token, f"Bearer {token}", "abc"])
    assert json.loads(scrubbed) == {"auth": "[redacted]", "echo": "[redacted]", "n": "abc"}


def test_a_secret_of_digits_inside_numbers_is_redacted_and_the_log_stays_whole(
    api: Api, upstream: Upstream
) -> None:
    """A password of digits that also appears inside a number of a step's output (an id,
    a timestamp): the number is redacted as a whole, and the log is still JSON."""
    secret = "20241234"
    upstream.route("/numbers", lambda request: Reply(200, {"id": 9920241234, "n": 7, "s": "x"}))
    user_id = api.create_user("ada")
    body = {"type": "basic", "name": "digits", "data": {"username": "ada", "password": secret}}
    assert api.post(f"/users/{user_id}/credentials", json=body).status_code == 201
    workflow_id = api.create_workflow(call_with(upstream, "digits", "/numbers", "stop"))
    api.activate(user_id, workflow_id)
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))

    assert log["status"] == "succeeded", log
    served = api.get(f"/workflows/{workflow_id}/logs").text
    assert secret not in served
    assert log["results"][1]["data"][0][0]["json"] == {"id": "[redacted]", "n": 7, "s": "x"}


def test_scrub_keeps_the_text_json_wherever_a_secret_is_found() -> None:
    recorded = json.dumps({"id": 9920241234, "2024-12": [True, None, 1.5], "s": "a2024b"})
    scrubbed = json.loads(scrub(recorded, ["2024"]))
    assert scrubbed == {"id": "[redacted]", "[redacted]-12": [True, None, 1.5], "s": "a[redacted]b"}
    assert json.loads(scrub(json.dumps([True, "ok"]), ["true"])) == ["[redacted]", "ok"]
