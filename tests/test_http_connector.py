"""The `http` connector on the wire: what it sends, what it records, how it fails."""

from __future__ import annotations

import gzip
import json
import socket
from typing import Any

from tests.conftest import Api, api_client
from tests.upstream import Reply, Upstream


def one_call(config: dict[str, Any], **block: Any) -> dict[str, Any]:
    return {
        "name": "One call",
        "trigger": {"type": "webhook"},
        "blocks": [{"name": "call", "connector": "http", "config": config, **block}],
    }


def run_once(
    api: Api, definition: dict[str, Any], data: dict[str, Any] | None = None, user: str = "ada"
) -> Any:
    user_id, workflow_id = api.install(definition, user)
    return api.wait_for(workflow_id, api.run(user_id, workflow_id, data))


def test_a_json_body_goes_out_as_json_with_the_method_and_headers(
    api: Api, upstream: Upstream
) -> None:
    upstream.route("/items", Reply(201, {"id": 7}))
    config = {
        "method": "PATCH",
        "url": f"{upstream.base_url}/items",
        "headers": {"X-Trace": "t-1"},
        "body": {"name": "{{ trigger.name }}", "tags": ["a", "b"]},
    }

    log = run_once(api, one_call(config), {"name": "Ada"})

    assert log["status"] == "succeeded", log
    sent = upstream.requests[0]
    assert sent.method == "PATCH"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-trace"] == "t-1"
    assert sent.headers["user-agent"].startswith("Solder/")
    assert json.loads(sent.body) == {"name": "Ada", "tags": ["a", "b"]}
    assert log["results"][1]["data"][0][0]["json"] == {"id": 7}
    assert log["results"][1]["data"][0][0]["statusCode"] == 201


def test_a_text_body_goes_out_as_it_is_under_the_blocks_own_content_type(
    api: Api, upstream: Upstream
) -> None:
    upstream.route("/form", Reply(200, {}))
    plain = {"method": "POST", "url": f"{upstream.base_url}/form", "body": "a=1&b=2"}
    typed = dict(plain, headers={"Content-Type": "application/x-www-form-urlencoded"})
    labelled = {**one_call(typed), "name": "Labelled"}

    run_once(api, one_call(plain))
    run_once(api, labelled, user="grace")

    untyped, form = upstream.requests
    assert untyped.body == b"a=1&b=2"
    assert "content-type" not in untyped.headers, "a text body is not labelled for the user"
    assert form.body == b"a=1&b=2"
    assert form.headers["content-type"] == "application/x-www-form-urlencoded"


def test_query_values_join_the_urls_own_query_string(api: Api, upstream: Upstream) -> None:
    upstream.route("/search", Reply(200, []))
    config = {
        "url": f"{upstream.base_url}/search?page=2&q=caf%C3%A9",
        "query": {"tag": ["x", "y z"], "limit": 10, "where": {"open": True}, "on": "{{ 1 + 1 }}"},
    }

    log = run_once(api, one_call(config))

    assert log["status"] == "succeeded", log
    assert upstream.requests[0].query == {
        "page": ["2"],
        "q": ["café"],
        "tag": ["x", "y z"],
        "limit": ["10"],
        "where": ['{"open":true}'],
        "on": ["2"],
    }


def test_a_redirect_is_recorded_not_followed(api: Api, upstream: Upstream) -> None:
    upstream.route("/old", Reply(302, {"moved": True}, {"Location": "/new"}))
    upstream.route("/new", Reply(200, {"here": True}))

    log = run_once(api, one_call({"url": f"{upstream.base_url}/old"}))

    assert log["status"] == "succeeded", log
    assert [r.path for r in upstream.requests] == ["/old"]
    assert log["results"][1]["data"][0][0]["statusCode"] == 302
    assert log["results"][1]["data"][0][0]["json"] == {"moved": True}


def test_a_body_that_is_not_json_is_kept_as_text_and_an_empty_one_as_null(
    api: Api, upstream: Upstream
) -> None:
    upstream.route("/text", Reply(200, b"plain words \xe2\x9c\x93"))
    upstream.route("/empty", Reply(200, b""))
    definition = {
        "name": "Two calls",
        "trigger": {"type": "webhook"},
        "blocks": [
            {"name": "text", "connector": "http", "config": {"url": f"{upstream.base_url}/text"}},
            {"name": "none", "connector": "http", "config": {"url": f"{upstream.base_url}/empty"}},
        ],
    }

    log = run_once(api, definition)

    assert log["results"][1]["data"][0][0]["json"] == "plain words ✓"
    assert log["results"][2]["data"][0][0]["json"] is None


def test_a_slow_answer_times_out_and_is_retried(api: Api, upstream: Upstream) -> None:
    upstream.route("/slow", Reply(200, {}, delay=3))
    retry = {"attempts": 2, "backoff": "fixed", "delayMs": 10}
    config = {"url": f"{upstream.base_url}/slow?token=s3cret", "timeoutMs": 200}

    log = run_once(api, one_call(config, retry=retry))

    assert log["status"] == "failed"
    error = log["results"][1]["error"]
    assert error["message"] == (
        f"GET {upstream.base_url}/slow?token=[redacted] timed out after 0.2 s"
    )
    assert error["attempts"] == 2
    assert len(upstream.requests) == 2


def test_a_refused_connection_fails_the_block_and_is_retried(api: Api) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    retry = {"attempts": 2, "backoff": "fixed", "delayMs": 10}

    log = run_once(api, one_call({"url": f"http://127.0.0.1:{port}/x"}, retry=retry))

    assert log["status"] == "failed"
    error = log["results"][1]["error"]
    assert error["message"].startswith(f"GET http://127.0.0.1:{port}/x failed: ")
    assert error["attempts"] == 2


def test_a_url_that_is_not_http_fails_without_a_call(api: Api) -> None:
    log = run_once(api, one_call({"url": "ftp://example.com/file"}))
    assert log["status"] == "failed"
    assert log["results"][1]["error"]["message"] == (
        "url must be an absolute http(s) URL, got 'ftp://example.com/file'"
    )


def test_a_host_name_is_checked_at_the_addresses_it_connects_to(
    make_server: Any, upstream: Upstream
) -> None:
    upstream.route("/hook", Reply(200, {"ok": True}))
    url = upstream.base_url.replace("127.0.0.1", "localhost") + "/hook"
    retry = {"attempts": 3, "backoff": "fixed", "delayMs": 10}
    refusing = make_server(http_allow_private_networks=False)
    allowing = make_server(http_allow_private_networks=True)

    with api_client(refusing) as api:
        refused = run_once(api, one_call({"url": url}, retry=retry))
    with api_client(allowing) as api:
        allowed = run_once(api, one_call({"url": url}))

    error = refused["results"][1]["error"]
    assert error["message"].startswith("refused to call localhost: ")
    assert "SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS" in error["message"]
    assert error["attempts"] == 1, "a refused address is not retried"
    assert allowed["status"] == "succeeded", allowed
    assert [r.path for r in upstream.requests] == ["/hook"], "only the allowed call went out"


def test_a_host_name_that_does_not_resolve_fails_the_block(api: Api) -> None:
    log = run_once(api, one_call({"url": "http://no-such-host.invalid/x"}))
    assert log["status"] == "failed"
    assert log["results"][1]["error"]["message"].startswith("cannot resolve no-such-host.invalid")


def test_a_compressed_answer_is_recorded_decompressed_and_bounded_as_such(
    make_server: Any, upstream: Upstream
) -> None:
    small = gzip.compress(json.dumps({"greeting": "hello"}).encode())
    zeros = gzip.compress(json.dumps({"zeros": "0" * 1_000_000}).encode())
    assert len(zeros) < 2048, "the compressed answer is within the limit"
    upstream.route("/small", Reply(200, small, {"Content-Encoding": "gzip"}))
    upstream.route("/bomb", Reply(200, zeros, {"Content-Encoding": "gzip"}))
    server = make_server(http_max_response_bytes=65536)

    with api_client(server) as api:
        small_log = run_once(api, one_call({"url": f"{upstream.base_url}/small"}))
        bomb = {**one_call({"url": f"{upstream.base_url}/bomb"}), "name": "Bomb"}
        bomb_log = run_once(api, bomb, user="grace")

    assert small_log["results"][1]["data"][0][0]["json"] == {"greeting": "hello"}
    assert "gzip" in upstream.requests[0].headers["accept-encoding"]
    assert bomb_log["status"] == "failed"
    assert "more than 65536 bytes" in bomb_log["results"][1]["error"]["message"]


def test_cookies_an_api_sets_are_not_sent_on_later_calls(api: Api, upstream: Upstream) -> None:
    """The client is shared by every tenant and end user: a session cookie that an API set
    in answer to one user's call is not sent with another's (or with any later call)."""
    upstream.route("/login", Reply(200, {"ok": True}, {"Set-Cookie": "session=ada-only; Path=/"}))
    url = upstream.base_url.replace("127.0.0.1", "localhost") + "/login"
    ada, workflow_id = api.install(one_call({"url": url}), "ada")
    grace = api.create_user("grace")
    api.activate(grace, workflow_id)

    first = api.wait_for(workflow_id, api.run(ada, workflow_id))
    second = api.wait_for(workflow_id, api.run(grace, workflow_id))

    assert first["status"] == second["status"] == "succeeded"
    assert [r.path for r in upstream.requests] == ["/login", "/login"]
    assert "cookie" not in upstream.requests[1].headers, upstream.requests[1].headers
