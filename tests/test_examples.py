"""The examples in examples/ run as documented (against a stand-in for the real app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api
from tests.test_golden_log import seed
from tests.upstream import Reply, Request, Upstream

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KEY = "Klaviyo-API-Key pk_3x4mpl3s3cr3t"


def klaviyo(upstream: Upstream, profiles: list[dict[str, Any]]) -> None:
    """Klaviyo's profiles endpoint: the seed's profile, for a request with the user's key."""

    def profiles_endpoint(request: Request) -> Reply:
        if request.headers.get("authorization") != KEY:
            return Reply(401, {"errors": [{"detail": "Missing or invalid private key."}]})
        wanted = request.query["filter"][0]
        return Reply(200, {"data": [p for p in profiles if p["attributes"]["email"] in wanted]})

    upstream.route("/api/profiles/", profiles_endpoint)


def example(upstream: Upstream) -> dict[str, Any]:
    text = (EXAMPLES / "klaviyo-profile-lookup.json").read_text()
    document: dict[str, Any] = json.loads(text.replace("https://a.klaviyo.com", upstream.base_url))
    return document


@pytest.mark.parametrize("email", ["[email protected]", "nobody@example.com"])
def test_the_klaviyo_example_finds_a_profile_with_the_users_key(
    api: Api, upstream: Upstream, email: str
) -> None:
    profile = seed()["data"][0]["results"][1]["data"][0][0]["profileId"]
    klaviyo(upstream, [profile])
    user_id, workflow_id = api.install(example(upstream))
    credential = {
        "type": "apiKey",
        "name": "klaviyo",
        "data": {"in": "header", "name": "Authorization", "key": KEY},
    }
    assert api.post(f"/users/{user_id}/credentials", json=credential).status_code == 201

    log = api.wait_for(workflow_id, api.run(user_id, workflow_id, {"email": email}))

    assert log["finished"] is True, log
    lookup, reduced = log["results"][1], log["results"][2]
    assert lookup["connectorId"] == "ae331681-25a5-452c-8d21-884fada67437"
    assert lookup["data"][0][0]["statusCode"] == 200
    assert log["inputs"][1]["data"]["query"] == {"filter": f'equals(email,"{email}")'}
    assert log["inputs"][1]["data"]["credential"] == "klaviyo"
    if email == profile["attributes"]["email"]:
        assert reduced["data"][0][0]["json"] == {
            "found": True,
            "profileId": "01F1EQ9A32KABYFC7Q0QNNHH33",
            "email": email,
            "phone": "+12394750599",
        }
    else:
        assert reduced["data"][0][0]["json"] == {"found": False}
    assert "pk_3x4mpl3s3cr3t" not in json.dumps(log)


def test_without_the_credential_the_example_fails_clearly(api: Api, upstream: Upstream) -> None:
    klaviyo(upstream, [])
    user_id, workflow_id = api.install(example(upstream))
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id, {"email": "a@example.com"}))
    assert log["status"] == "failed"
    assert "klaviyo" in log["results"][1]["error"]["message"]
    assert upstream.requests == []
