"""Running workflows: failures in the log, reruns, idempotent run requests, errors, analytics."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from solder import engine
from tests import databases
from tests.conftest import Api, Server, api_client
from tests.upstream import Reply, Request, Upstream


def call_then_transform(upstream: Upstream, **http: Any) -> dict[str, Any]:
    return {
        "name": "Call and reshape",
        "trigger": {"type": "webhook"},
        "blocks": [
            {
                "name": "call",
                "connector": "http",
                "config": {
                    "method": "POST",
                    "url": f"{upstream.base_url}/hook",
                    "body": "{{ trigger }}",
                },
                **http,
            },
            {
                "name": "reshape",
                "connector": "transform",
                "config": {"expression": "{{ {'got': blocks.call} }}"},
            },
        ],
    }


def test_a_failing_block_fails_the_execution_with_its_error_in_the_log(
    api: Api, upstream: Upstream
) -> None:
    upstream.route("/hook", Reply(422, {"detail": "email is invalid"}))
    user_id, workflow_id = api.install(call_then_transform(upstream))

    log = api.wait_for(workflow_id, api.run(user_id, workflow_id, {"email": "nope"}))

    assert log["finished"] is False
    assert log["status"] == "failed"
    assert log["stoppedAt"] is not None
    assert len(log["results"]) == 2, "the block after the failure does not run"
    failed = log["results"][1]
    assert failed["data"][0][0]["statusCode"] == 422
    assert failed["data"][0][0]["json"] == {"detail": "email is invalid"}
    assert "HTTP 422" in failed["error"]["message"]
    assert failed["error"]["attempts"] == 1
    errors = api.get(f"/workflows/{workflow_id}/errors").json()["data"]
    assert [e["executionId"] for e in errors] == [log["executionId"]]
    assert errors[0]["block"] == "call"
    assert errors[0]["workflowId"] == workflow_id
    assert "HTTP 422" in errors[0]["message"]
    assert errors[0]["errorOccurredAt"] == log["stoppedAt"]


def test_on_error_continue_records_the_error_as_output_and_goes_on(
    api: Api, upstream: Upstream
) -> None:
    upstream.route("/hook", Reply(500, {"oops": True}))
    user_id, workflow_id = api.install(call_then_transform(upstream, onError="continue"))

    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))

    assert log["finished"] is True
    error_item = log["results"][1]["data"][0][0]["json"]
    assert "HTTP 500" in error_item["error"]["message"]
    assert log["results"][2]["data"][0][0]["json"] == {"got": error_item}


def test_retry_succeeds_on_the_third_attempt(api: Api, upstream: Upstream) -> None:
    calls: list[Request] = []

    def flaky(request: Request) -> Reply:
        calls.append(request)
        return Reply(503, {}) if len(calls) < 3 else Reply(200, {"ok": True})

    upstream.route("/hook", flaky)
    retry = {"attempts": 3, "backoff": "fixed", "delayMs": 10}
    user_id, workflow_id = api.install(call_then_transform(upstream, retry=retry))

    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))

    assert log["finished"] is True
    assert len(calls) == 3
    assert log["results"][1]["data"][0][0] == {
        "json": {"ok": True},
        "statusCode": 200,
        "id": log["results"][1]["data"][0][0]["id"],
    }


def test_client_errors_are_not_retried(api: Api, upstream: Upstream) -> None:
    upstream.route("/hook", Reply(404, {}))
    retry = {"attempts": 3, "backoff": "fixed", "delayMs": 10}
    user_id, workflow_id = api.install(call_then_transform(upstream, retry=retry))
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    assert log["finished"] is False
    assert len(upstream.requests) == 1


def test_rerun_makes_a_new_execution_with_the_same_trigger_data(
    api: Api, upstream: Upstream, server: Server
) -> None:
    upstream.route("/hook", lambda request: Reply(200, {"echo": request.body.decode()}))
    user_id, workflow_id = api.install(call_then_transform(upstream))
    original_id = api.run(user_id, workflow_id, {"email": "ada@example.com"})
    original = api.wait_for(workflow_id, original_id)
    kept = databases.rows(
        server.settings.data_dir,
        f"SELECT trigger_id, trigger_data FROM executions WHERE id = '{original_id}'",
    )
    assert kept == [("", "")], "the log holds the trigger: the ended row keeps no copy"

    response = api.post(f"/workflows/{workflow_id}/rerun/{original_id}", params={"userId": user_id})

    assert response.status_code == 200, response.text
    assert response.json()["message"] == "success"
    rerun_id = response.json()["executionId"]
    assert rerun_id != original_id
    rerun = api.wait_for(workflow_id, rerun_id)
    assert rerun["rerunOf"] == original_id
    assert rerun["results"][0]["data"][0][0]["json"] == {"email": "ada@example.com"}
    assert rerun["results"][1]["data"][0][0]["json"] == original["results"][1]["data"][0][0]["json"]
    assert [b.body for b in upstream.requests] == [upstream.requests[0].body] * 2
    after = {log["executionId"]: log for log in api.logs(workflow_id)}
    assert after[original_id] == original, "the original is unchanged"


def test_rerun_of_an_unknown_execution_is_404(api: Api, upstream: Upstream) -> None:
    _, workflow_id = api.install(call_then_transform(upstream))
    response = api.post(f"/workflows/{workflow_id}/rerun/aaaaaaaaaaaaaaaaaaaaa")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_idempotency_key_returns_the_first_answer_and_runs_once(
    api: Api, upstream: Upstream
) -> None:
    upstream.route("/hook", Reply(200, {}))
    user_id, workflow_id = api.install(call_then_transform(upstream))
    body = {"userId": user_id, "workflowId": workflow_id, "data": {"n": 1}}
    headers = {"Idempotency-Key": "signup-42"}

    first = api.post("/run/workflow", json=body, headers=headers)
    again = api.post("/run/workflow", json=body, headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    api.wait_for(workflow_id, first.json()["executionId"])
    assert len(api.logs(workflow_id)) == 1
    other = api.post("/run/workflow", json=body, headers={"Idempotency-Key": "signup-43"})
    assert other.json()["executionId"] != first.json()["executionId"]


def test_idempotency_key_reused_with_another_request_is_refused(
    api: Api, upstream: Upstream
) -> None:
    user_id, workflow_id = api.install(call_then_transform(upstream))
    headers = {"Idempotency-Key": "k"}
    body = {"userId": user_id, "workflowId": workflow_id, "data": {"n": 1}}
    assert api.post("/run/workflow", json=body, headers=headers).status_code == 200
    body["data"] = {"n": 2}
    refused = api.post("/run/workflow", json=body, headers=headers)
    assert refused.status_code == 400
    assert "Idempotency-Key" in refused.json()["message"]


def test_concurrent_requests_with_one_idempotency_key_run_once(
    api: Api, upstream: Upstream
) -> None:
    upstream.route("/hook", Reply(200, {}))
    user_id, workflow_id = api.install(call_then_transform(upstream))
    body = {"userId": user_id, "workflowId": workflow_id, "data": {}}
    start = threading.Barrier(8)

    def send(_: int) -> str:
        start.wait()
        response = api.post("/run/workflow", json=body, headers={"Idempotency-Key": "same"})
        assert response.status_code == 200, response.text
        execution_id: str = response.json()["executionId"]
        return execution_id

    with ThreadPoolExecutor(8) as pool:
        answers = set(pool.map(send, range(8)))
    assert len(answers) == 1
    api.wait_for(workflow_id, answers.pop())
    assert len(api.logs(workflow_id)) == 1


def test_analytics_counts_runs_errors_and_calls_to_other_apps(api: Api, upstream: Upstream) -> None:
    replies = iter([Reply(200, {}), Reply(200, {}), Reply(400, {})])
    upstream.route("/hook", lambda _request: next(replies))
    user_id, workflow_id = api.install(call_then_transform(upstream))
    for _ in range(3):
        api.wait_for(workflow_id, api.run(user_id, workflow_id))

    totals = api.get(f"/workflows/{workflow_id}/analytics", params={"userId": user_id}).json()

    assert totals == {"totalWorkflowRuns": 3, "totalErrors": 1, "totalAppActions": 3}


def test_an_expression_error_fails_the_block_with_a_clear_message(api: Api) -> None:
    definition = {
        "name": "Bad math",
        "trigger": {"type": "webhook"},
        "blocks": [
            {"name": "boom", "connector": "transform", "config": {"expression": "{{ 1 + 'a' }}"}}
        ],
    }
    user_id, workflow_id = api.install(definition)
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    assert log["status"] == "failed"
    assert "1 + 'a'" in log["results"][1]["error"]["message"]


def test_the_http_connector_refuses_private_addresses_unless_allowed(
    make_server: Any, upstream: Upstream
) -> None:
    server = make_server(http_allow_private_networks=False)
    with api_client(server) as api:
        user_id, workflow_id = api.install(call_then_transform(upstream))
        log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    assert log["status"] == "failed"
    assert "SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS" in log["results"][1]["error"]["message"]
    assert upstream.requests == []


def test_a_runaway_expression_fails_its_block_and_the_server_keeps_answering(
    make_server: Any,
) -> None:
    server = make_server(expression_timeout_ms=300)
    forever = "{{ ($f := function($x){ $f($x + 1) }; $f(0)) }}"
    definition = {
        "name": "Forever",
        "trigger": {"type": "webhook"},
        "blocks": [{"name": "loop", "connector": "transform", "config": {"expression": forever}}],
    }
    with api_client(server) as api:
        user_id, workflow_id = api.install(definition)
        log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
        assert api.get("/health").status_code == 200
    assert log["status"] == "failed"
    assert "timeout" in log["results"][1]["error"]["message"].lower()


def test_an_oversized_response_fails_the_block_instead_of_filling_the_log(
    make_server: Any, upstream: Upstream
) -> None:
    upstream.route("/hook", Reply(200, {"blob": "x" * 10_000}))
    server = make_server(http_max_response_bytes=2048)
    with api_client(server) as api:
        user_id, workflow_id = api.install(call_then_transform(upstream))
        log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    assert log["status"] == "failed"
    assert "SOLDER_HTTP_MAX_RESPONSE_BYTES" in log["results"][1]["error"]["message"]
    assert "xxxx" not in str(log)


def test_secret_headers_and_query_values_are_redacted_from_the_log(
    api: Api, upstream: Upstream
) -> None:
    upstream.route("/hook", Reply(500, {}))
    definition = call_then_transform(upstream)
    definition["blocks"][0]["config"].update(
        url=f"{upstream.base_url}/hook?token=s3cret-in-url&page=2",
        headers={"Authorization": "Bearer s3cret-header", "X-Trace": "visible"},
        query={"api_key": "s3cret-query", "q": "visible-too"},
    )
    user_id, workflow_id = api.install(definition)

    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))

    sent = upstream.requests[0]
    assert sent.headers["authorization"] == "Bearer s3cret-header"
    assert sent.query["api_key"] == ["s3cret-query"]
    assert sent.query["token"] == ["s3cret-in-url"]
    assert "s3cret" not in str(log)
    shown = log["inputs"][1]["data"]
    assert shown["headers"] == {"Authorization": "[redacted]", "X-Trace": "visible"}
    assert shown["query"] == {"api_key": "[redacted]", "q": "visible-too"}
    assert "page=2" in shown["url"]
    assert "HTTP 500" in log["results"][1]["error"]["message"]


def test_a_malformed_url_fails_the_block_with_a_clear_message(api: Api) -> None:
    definition = {
        "name": "Bad URL",
        "trigger": {"type": "webhook"},
        "blocks": [{"name": "call", "connector": "http", "config": {"url": "http://[::1"}}],
    }
    user_id, workflow_id = api.install(definition)
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    message = log["results"][1]["error"]["message"]
    assert "not a valid URL" in message
    assert "internal error" not in message


def test_an_output_too_big_for_json_fails_the_block_cleanly(api: Api) -> None:
    huge = "{{ 99999999999 * 99999999999 * 99999999999 }}"
    definition = {
        "name": "Huge",
        "trigger": {"type": "webhook"},
        "blocks": [{"name": "big", "connector": "transform", "config": {"expression": huge}}],
    }
    user_id, workflow_id = api.install(definition)
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    assert log["status"] == "failed"
    assert "cannot be stored as JSON" in log["results"][1]["error"]["message"]
    assert log["inputs"][1]["data"] == {"expression": huge}


def test_an_error_outside_the_blocks_ends_the_run_failed_with_its_trigger_logged(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id, workflow_id = api.install(
        {
            "name": "broken engine",
            "trigger": {"type": "webhook"},
            "blocks": [{"name": "a", "connector": "transform", "config": {"expression": "1"}}],
        }
    )

    def no_definition(*_args: Any) -> Any:  # a fault in the engine before any block runs
        raise RuntimeError("injected")

    monkeypatch.setattr(engine, "from_document", no_definition)
    execution_id = api.run(user_id, workflow_id, {"n": 7})

    log = api.wait_for(workflow_id, execution_id)

    assert log["status"] == "failed"
    assert [result["data"][0][0]["json"] for result in log["results"]] == [{"n": 7}]
    data_dir = server.settings.data_dir
    assert (
        databases.rows(data_dir, f"SELECT seq FROM steps WHERE execution_id = '{execution_id}'")
        == []
    )
    [(message,)] = databases.rows(
        data_dir, f"SELECT error_message FROM executions WHERE id = '{execution_id}'"
    )
    assert "injected" in str(message)
