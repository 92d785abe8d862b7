"""Enforcement is central: every route declares its action and needs a credential."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from corral.identity import ACTIONS
from corral.server.app import create_app
from corral.server.auth import ACTION_ATTRIBUTE
from tests.server.conftest import fast_config, running_app

# Reachable without an API token, each for a reason: liveness, the public CA
# certificate agents pin, and registration (the activation code is the credential).
UNAUTHENTICATED = {("GET", "/healthz"), ("GET", "/ca.pem"), ("POST", "/api/v1/register")}


def _actions(dependant: Any) -> Iterator[str]:
    for dep in dependant.dependencies:
        action = getattr(dep.call, ACTION_ATTRIBUTE, None)
        if action is not None:
            yield action
        yield from _actions(dep)


def _flatten(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI's included routers
            yield from _flatten(route.original_router.routes)


def routes() -> list[tuple[str, str, list[str]]]:
    app = create_app(fast_config(Path("/nonexistent")))
    found = []
    for route in _flatten(app.routes):
        for method in sorted(route.methods):
            found.append((method, route.path, list(_actions(route.dependant))))
    return found


ROUTES = routes()


def test_the_inventory_is_complete() -> None:
    assert len(ROUTES) >= 40
    assert not [r for r in ROUTES if r[0] == "GET" and r[1] in ("/docs", "/openapi.json")]


@pytest.mark.parametrize(
    ("method", "path", "actions"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES]
)
def test_every_route_declares_exactly_one_known_action(
    method: str, path: str, actions: list[str]
) -> None:
    if (method, path) in UNAUTHENTICATED:
        assert actions == []
        return
    assert len(actions) == 1, f"{method} {path} declares {actions}"
    assert actions[0] in ACTIONS


CREDENTIALS = ["", "Bearer crl_wrong", "Basic abc", "Bearer ", "CorralNode x", "crl_x"]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def test_no_route_is_reachable_without_a_valid_credential(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data", auth_failure_limit=100_000)
    reachable = []
    async with running_app(config) as api:
        for method, path, _declared in ROUTES:
            if (method, path) in UNAUTHENTICATED:
                continue
            for credential in CREDENTIALS:
                headers = {"Authorization": credential}
                response = await api.client.request(
                    method, concrete(path), headers=headers, json={}
                )
                if response.status_code != 401 or response.json()["error"]["type"] != "AuthError":
                    reachable.append((method, path, credential, response.status_code))
    assert reachable == []
