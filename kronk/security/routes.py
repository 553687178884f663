"""``GET /v1/auth/whoami``: who the request's key is (its name and scopes), so a client (the browser UI) can
hide what the key may not do. With keys off it answers ``anonymous`` with the admin scope (every route is open
then, behind the Host/Origin check)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from kronk.errors import Unauthorized
from kronk.security.auth import principal_of
from kronk.security.keys import ADMIN

router = APIRouter()


@router.get("/v1/auth/whoami")
async def whoami(request: Request) -> dict[str, Any]:
    who = principal_of(request)
    if who is None:  # the access middleware did not run: fail closed
        raise Unauthorized("no access check ran for this request")
    return {"object": "principal", "name": who.name, "scopes": [ADMIN] if who.admin else [],
            "admin": who.admin, "keys_on": not who.anonymous, "rpm": who.rpm}
