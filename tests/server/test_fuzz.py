"""Fuzz the HTTP API from its own OpenAPI description (issue 3, "Proof required").

schemathesis reads `app.openapi()` (the description the server serves to authenticated callers
at GET /api/v1/openapi.json) and generates requests for every operation: path parameters, query
strings and JSON bodies, both schema-conforming ("positive") and schema-violating ("negative").
Hypothesis runs derandomized (a fixed seed) with a bounded number of examples per operation, so
the same requests are generated on every run; generation happens first and the requests are
then sent one at a time, in order, to the app in-process (httpx over ASGITransport, lifespan
running), so the run is deterministic.

* As the admin: no response is a 5xx and no handler raises. About half of the positive examples
  of an operation with path parameters name real objects (a node, a document, a command, a user, a
  role, a token, an access request, an activation created beforehand), so generated bodies and
  queries reach the handlers instead of stopping at "not found"; DELETE operations run last.
* With no credentials and with a wrong token: every response is 401, except the public routes
  GET /healthz, GET /ca.pem and POST /api/v1/register (which never succeeds for fuzzed input).

Each test writes how many requests it sent to the terminal ("fuzz: ..."). At the time of
writing (61 operations) the admin run sends 1,049 requests and the unauthenticated run 882
(441 generated requests, each without a token and with a wrong one): 1,931 in all, in about
20 s on two cores. The two defects it found (huge integers reaching SQLite; a malformed body
answered before authentication) are fixed and kept as regression tests at the end.
"""

from __future__ import annotations

import asyncio
import json
import re
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from schemathesis import GenerationMode

from tests.server.conftest import Api, fast_config, running_app

BASE_URL = "http://corral.test"

# Examples per operation and generation mode (operations without inputs yield one).
ADMIN_POSITIVE = 15
ADMIN_NEGATIVE = 8
UNAUTHENTICATED_PER_MODE = 5

# Reachable without a token; everything else must answer 401 to a missing or wrong one.
PUBLIC = frozenset({"GET /healthz", "GET /ca.pem", "POST /api/v1/register"})
REGISTER = "POST /api/v1/register"

# The admin is the caller: demoting it would turn the rest of the run into 403s.
ADMIN_USER_PATH = "/api/v1/users/admin"

# A well-formed token (the `crl_` prefix) that the server never issued.
WRONG_TOKEN = "crl_" + "A" * 43

# Defects this fuzz found and the server since fixed (kept as regression tests at the
# end of this module): integers beyond SQLite's 64-bit range reaching the database
# (HTTP 500), and a malformed body answered 400 before the caller was authenticated.

DOCUMENT = json.dumps(
    {
        "schemaVersion": "2.2",
        "description": "fuzz target",
        "parameters": {"message": {"type": "String", "default": "hi"}},
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "say",
                "inputs": {"runCommand": ["echo {{ message }}"]},
            }
        ],
    }
)


@dataclass(frozen=True)
class Generated:
    """One generated request (without credentials) for one operation."""

    operation: str  # "METHOD /path/{template}"
    mode: str
    request: dict[str, Any]  # keyword arguments of httpx.AsyncClient.request


@dataclass
class Outcome:
    """What a run sent and what went wrong."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def fail(self, case: Generated, credential: str, problem: str, detail: str) -> None:
        """Keep the first failing request of each (operation, credential, problem)."""
        key = (case.operation, credential, problem)
        if key not in self.failures:
            self.failures[key] = (
                f"{case.operation} [{case.mode}, {credential}]: {problem}\n"
                f"  request: {_describe(case.request)}\n{detail}"
            )

    def report(self) -> str:
        """All failures, for the assertion message."""
        return f"{len(self.failures)} failing operation(s):\n\n" + "\n\n".join(
            self.failures.values()
        )


def _describe(request: dict[str, Any]) -> str:
    shown = {k: v for k, v in request.items() if k != "headers" and v is not None}
    headers = {k: v for k, v in request["headers"].items() if k.lower() != "authorization"}
    return repr({**shown, "headers": headers})


def _to_httpx(case: schemathesis.Case) -> dict[str, Any]:
    """schemathesis serializes for `requests`; the same request as httpx keyword arguments."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    request: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": {str(k): str(v) for k, v in kwargs["headers"].items()},
        "params": kwargs.get("params"),
    }
    if "json" in kwargs:
        request["json"] = kwargs["json"]
    if "data" in kwargs:
        data = kwargs["data"]
        request["content"] = data.encode() if isinstance(data, str) else data
    unexpected = set(kwargs) - {"method", "url", "headers", "params", "cookies", "json", "data"}
    assert not unexpected, f"unhandled serialization {unexpected} for {case.operation.label}"
    assert not kwargs.get("cookies"), "the API takes no cookies"
    return request


def _generate(
    label: str,
    strategy: st.SearchStrategy[schemathesis.Case],
    mode: GenerationMode,
    examples: int,
) -> list[Generated]:
    """Up to `examples` requests from `strategy`, the same ones on every run."""
    out: list[Generated] = []

    @settings(
        max_examples=examples,
        derandomize=True,  # a fixed seed: the same examples on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # nothing fails here, so nothing to shrink
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def collect(case: schemathesis.Case) -> None:
        out.append(Generated(label, mode.value, _to_httpx(case)))

    collect()
    return out


def _operations(app_schema: dict[str, Any]) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_dict(app_schema)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40, "the description lost its operations"
    # Deleting the seeded objects last lets the other operations reach them first.
    return sorted(operations, key=lambda op: op.method.upper() == "DELETE")


def _can_break(operation: schemathesis.APIOperation) -> bool:
    """Whether a request can violate the description: path parameters here are free-form
    strings (any value is valid), so negative examples need a query or a body."""
    return bool(len(operation.query) + len(operation.body))


def _label(operation: schemathesis.APIOperation) -> str:
    return f"{operation.method.upper()} {operation.path}"


def _not_demoting_admin(case: schemathesis.Case) -> bool:
    return not (case.method.upper() == "PATCH" and case.formatted_path == ADMIN_USER_PATH)


def generate_admin_cases(app_schema: dict[str, Any], seeds: dict[str, str]) -> list[Generated]:
    """Positive examples (half of them on seeded objects where there are path parameters)
    and negative examples of every operation."""
    cases: list[Generated] = []
    for operation in _operations(app_schema):
        label = _label(operation)
        positive = operation.as_strategy()
        seeded = _seeded_path_parameters(operation.path, seeds)
        if seeded:
            positive = st.one_of(positive, operation.as_strategy(path_parameters=seeded))
        positive = positive.filter(_not_demoting_admin)
        cases += _generate(label, positive, GenerationMode.POSITIVE, ADMIN_POSITIVE)
        if _can_break(operation):
            negative = operation.as_strategy(GenerationMode.NEGATIVE).filter(_not_demoting_admin)
            cases += _generate(label, negative, GenerationMode.NEGATIVE, ADMIN_NEGATIVE)
    return cases


def generate_unauthenticated_cases(app_schema: dict[str, Any]) -> list[Generated]:
    """Positive and negative examples of every operation."""
    cases: list[Generated] = []
    for operation in _operations(app_schema):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not _can_break(operation):
                continue
            strategy = operation.as_strategy(mode)
            cases += _generate(_label(operation), strategy, mode, UNAUTHENTICATED_PER_MODE)
    return cases


def _seeded_path_parameters(path: str, seeds: dict[str, str]) -> dict[str, str] | None:
    """Path parameters naming seeded objects, when there is one for each parameter."""
    kind = path.removeprefix("/api/v1/").split("/", 1)[0]  # `name` is per kind of object
    values: dict[str, str] = {}
    for name in re.findall(r"{(\w+)}", path):
        value = seeds.get(f"{kind}:{name}", seeds.get(name))
        if value is None:
            return None
        values[name] = value
    return values or None


async def seed_objects(api: Api) -> dict[str, str]:
    """One of each object the API has, for path parameters to name."""

    async def created(method: str, url: str, body: object, **kwargs: Any) -> dict[str, Any]:
        response = await api.client.request(method, url, json=body, **kwargs)
        assert response.status_code == 201, response.text
        return dict(response.json())

    node_id, _ = await api.register_node({"env": "dev"}, SigningKey.generate())
    activation = await created("POST", "/api/v1/activations", {"registration_limit": 5})
    document = await created("POST", "/api/v1/documents", {"name": "FuzzDoc", "content": DOCUMENT})
    command = await created(
        "POST",
        "/api/v1/commands",
        {"document_name": document["name"], "targets": [node_id], "comment": "fuzz"},
    )
    user = await created("POST", "/api/v1/users", {"name": "fuzz-user", "roles": ["viewer"]})
    policy = {"statements": [{"effect": "allow", "actions": ["node:List"], "resources": ["*"]}]}
    role = await created("POST", "/api/v1/roles", {"name": "fuzz-role", "policy": policy})
    access = await created(
        "POST",
        "/api/v1/access/requests",
        {"targets": ["tag:env=dev"], "role": "operator", "duration_seconds": 3600, "reason": "x"},
        headers={"Authorization": f"Bearer {user['token']}"},
    )
    return {
        "activation_id": str(activation["activation_id"]),
        "node_id": node_id,
        "command_id": str(command["command_id"]),
        "token_id": str(user["token_id"]),
        "request_id": str(access["request_id"]),
        "documents:name": str(document["name"]),
        "users:name": str(user["name"]),
        "roles:name": str(role["name"]),
    }


Check = Callable[[Generated, str, httpx.Response], str | None]


async def send_all(
    app: Any,
    cases: list[Generated],
    credentials: dict[str, str | None],
    check: Check,
    outcome: Outcome,
) -> None:
    """Send every case with every credential, in order, and check each response."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        for case in cases:
            for credential, token in credentials.items():
                headers = dict(case.request["headers"])
                if token is not None:
                    headers["Authorization"] = f"Bearer {token}"
                outcome.sent += 1
                try:
                    response = await client.request(**{**case.request, "headers": headers})
                except Exception as error:  # the app raised: report it with its traceback
                    trace = "".join(traceback.format_exception(error))
                    outcome.fail(case, credential, type(error).__name__, trace)
                    continue
                outcome.statuses[response.status_code] += 1
                problem = check(case, credential, response)
                if problem is not None:
                    detail = f"  response {response.status_code}: {response.text[:1000]}"
                    outcome.fail(case, credential, problem, detail)


def _summary(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    what: str,
    cases: list[Generated],
    outcome: Outcome,
) -> None:
    """One line in the terminal with the number of requests (the figure the docs quote)."""
    operations = len({case.operation for case in cases})
    text = (
        f"fuzz: {outcome.sent} requests {what} ({len(cases)} generated, {operations} operations);"
        f" statuses {dict(sorted(outcome.statuses.items()))}"
    )
    request.node.user_properties.append(("fuzz_requests", outcome.sent))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        with capsys.disabled():  # shown even when the test passes
            reporter.write_line(text)


def no_server_error(case: Generated, credential: str, response: httpx.Response) -> str | None:
    """The admin run: anything but a 5xx (and register never succeeds)."""
    if response.status_code >= 500:
        return f"HTTP {response.status_code}"
    if response.status_code == 401:
        return "HTTP 401 for the admin token"
    if case.operation == REGISTER and response.is_success:
        return "registered a node with a fuzzed activation"
    return None


def refused(case: Generated, credential: str, response: httpx.Response) -> str | None:
    """The unauthenticated run: 401 everywhere but the public routes."""
    status = response.status_code
    if status >= 500:
        return f"HTTP {status}"
    if case.operation == REGISTER:
        return "registered a node with a fuzzed activation" if response.is_success else None
    if case.operation in PUBLIC or status == 401:
        return None
    return f"HTTP {status} instead of 401"


def _error_message(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return None


async def test_fuzz_as_admin_no_server_errors(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fast_config(tmp_path / "data", auth_failure_limit=1_000_000)
    async with running_app(config) as api:
        seeds = await seed_objects(api)
        cases = await asyncio.to_thread(generate_admin_cases, api.app.openapi(), seeds)
        outcome = Outcome()
        await send_all(api.app, cases, {"admin": api.token}, no_server_error, outcome)
        who = await api.client.get("/api/v1/whoami")
        assert (who.status_code, who.json()["roles"]) == (200, ["admin"]), who.text
    _summary(request, capsys, "as admin", cases, outcome)
    assert not outcome.failures, outcome.report()
    assert outcome.sent >= 700
    # The fuzz reached the handlers, not only the validation in front of them.
    assert outcome.statuses[200] > 0
    assert outcome.statuses[201] > 0


async def test_fuzz_without_credentials_is_refused(
    tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    # A high limit: the 429 slow-down for repeated failures would otherwise answer most of them.
    config = fast_config(tmp_path / "data", auth_failure_limit=1_000_000)
    async with running_app(config) as api:
        cases = await asyncio.to_thread(generate_unauthenticated_cases, api.app.openapi())
        outcome = Outcome()
        credentials = {"no token": None, "wrong token": WRONG_TOKEN}
        await send_all(api.app, cases, credentials, refused, outcome)
    _summary(request, capsys, "without valid credentials", cases, outcome)
    assert not outcome.failures, outcome.report()
    assert outcome.sent >= 700
    assert outcome.statuses[401] >= 0.8 * outcome.sent


# --- regression tests for the defects this fuzz found

TOO_BIG = 2**64  # beyond SQLite's signed 64-bit INTEGER


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        ("PUT", "/api/v1/documents/FuzzDoc/default-version", {"json": {"version": TOO_BIG}}),
        ("GET", "/api/v1/documents/FuzzDoc", {"params": {"version": str(TOO_BIG)}}),
        (
            "POST",
            "/api/v1/commands",
            {"json": {"document_name": "FuzzDoc", "document_version": TOO_BIG, "targets": ["*"]}},
        ),
        ("GET", "/api/v1/audit", {"params": {"before": TOO_BIG}}),
    ],
    ids=["default-version", "document-version-query", "command-document-version", "audit-before"],
)
async def test_huge_integers_are_client_errors(
    api: Api, method: str, url: str, kwargs: dict[str, Any]
) -> None:
    created = await api.client.post(
        "/api/v1/documents", json={"name": "FuzzDoc", "content": DOCUMENT}
    )
    assert created.status_code == 201, created.text
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url=BASE_URL, headers=api.client.headers
    ) as client:
        response = await client.request(method, url, **kwargs)
    assert 400 <= response.status_code < 500, response.text


async def test_unparsable_body_without_token_is_401(api: Api) -> None:
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as anonymous:
        response = await anonymous.post(
            "/api/v1/users", content=b"\x00", headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 401, response.text
