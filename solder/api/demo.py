"""A stand-in for a third-party API, served in dev mode so the demo workflow needs no internet."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter

router = APIRouter(prefix="/demo", tags=["demo"], include_in_schema=False)


@router.get("/profiles")
async def profile(email: str = "") -> dict[str, Any]:
    """A profile shaped like Klaviyo's, derived from the email address."""
    profile_id = hashlib.sha256(email.encode()).hexdigest()[:26].upper()
    return {
        "data": {
            "type": "profile",
            "id": profile_id,
            "attributes": {"email": email, "first_name": email.split("@")[0].title()},
        }
    }
