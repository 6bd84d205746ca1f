"""The admin API: create accounts and change their policies at run time, guarded by the admin key."""

from __future__ import annotations

import secrets

import anyio
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from alambic.errors import PermissionDeniedError
from alambic.serve.policy import bearer_token
from alambic.store import Policy, create_account, list_accounts, set_policy


def require_admin(request: Request) -> None:
    admin_key: str | None = request.app.state.settings.admin_key
    if not admin_key:
        raise PermissionDeniedError("The admin API is disabled; start the server with --admin-key.")
    if not secrets.compare_digest(bearer_token(request).encode(), admin_key.encode()):
        raise PermissionDeniedError("This endpoint needs the admin key.", code="not_admin")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


class PolicyBody(BaseModel):
    policy: Policy
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    reason: str | None = None


class NewAccount(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    policy: Policy = Policy.ALLOW
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


@router.get("/accounts")
async def accounts(request: Request) -> dict:
    summaries = await anyio.to_thread.run_sync(list_accounts, request.app.state.store)
    return {"object": "list", "data": [vars(s) for s in summaries]}


@router.post("/accounts", status_code=201)
async def new_account(body: NewAccount, request: Request) -> dict:
    def create() -> str:
        return create_account(
            request.app.state.store,
            body.name,
            policy=body.policy,
            requests_per_minute=body.requests_per_minute,
            tokens_per_minute=body.tokens_per_minute,
        )

    return {"name": body.name, "api_key": await anyio.to_thread.run_sync(create)}


@router.put("/accounts/{name}/policy")
async def change_policy(name: str, body: PolicyBody, request: Request) -> dict:
    def change():
        return set_policy(
            request.app.state.store,
            name,
            body.policy,
            requests_per_minute=body.requests_per_minute,
            tokens_per_minute=body.tokens_per_minute,
            actor="admin-api",
            reason=body.reason,
        )

    return vars(await anyio.to_thread.run_sync(change))
