"""Systems Manager's wire protocol (AWS JSON 1.1): operations, request parsing, errors.

Rules, as botocore's model of the service (`ssm/2014-11-06/service-2.json`) has them:

* A call is `POST /` with `X-Amz-Target: AmazonSSM.<Operation>` and a JSON object body
  (`Content-Type: application/x-amz-json-1.1`); members are PascalCase. Unknown
  members, wrong JSON types and values outside the model's limits are refused with
  `ValidationException` naming the member (values are never echoed: they may be
  secrets).
* A success is HTTP 200 with a JSON object; absent optional members are left out;
  timestamps are epoch seconds (JSON numbers).
* An error is `{"__type": CODE, "message": TEXT}` with HTTP 400 for the caller's
  mistakes (including access denied and authentication failures, as AWS answers)
  and 500/503 for ours; botocore raises `ClientError` with `Error.Code` = CODE.
  Corral's errors are translated here, in one place (`wire_error`).
* ARNs name a fixed pseudo account, `000000000000`, in the region the request was
  signed for.

An `Operation` pairs a name with the Corral action its audit record carries, a
request model and a handler; front-end modules (parameters, later documents,
commands, sessions) each export a list of them and `endpoint.py` registers them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_pascal

from corral.errors import (
    AccessDeniedError,
    AuthError,
    ConflictError,
    CorralError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
    ValidationError,
)
from corral.params import DecryptionError
from corral.params.names import HierarchyTooDeep
from corral.server.auth import Caller
from corral.server.context import ServerContext
from corral.server.sigv4 import IncompleteSignatureError, SignatureError, UnrecognizedClientError
from corral.store.params import (
    ParameterAlreadyExists,
    ParameterLabelLimit,
    ParameterNotFound,
    ParameterVersionLimit,
    ParameterVersionNotFound,
)

logger = logging.getLogger(__name__)

TARGET_PREFIX = "AmazonSSM."
CONTENT_TYPE = "application/x-amz-json-1.1"
ACCEPTED_CONTENT_TYPES = frozenset(
    {"application/x-amz-json-1.1", "application/x-amz-json-1.0", "application/json"}
)
# ARNs need an account; Corral has none, so every ARN names this one.
ACCOUNT_ID = "000000000000"
# The region of ARNs for calls not signed for a region (a bearer token, a node).
DEFAULT_REGION = "us-east-1"

JsonObject = dict[str, object]

# Codes that mean "who are you / you may not" (audited as denied, not failed).
DENIED_CODES = frozenset(
    {
        "AccessDeniedException",
        "ThrottlingException",
        "IncompleteSignatureException",
        "InvalidSignatureException",
        "UnrecognizedClientException",
    }
)

# Corral's errors and the Systems Manager code each becomes (first match wins).
_CODES: tuple[tuple[type[CorralError], str], ...] = (
    (ParameterNotFound, "ParameterNotFound"),
    (ParameterVersionNotFound, "ParameterVersionNotFound"),
    (ParameterAlreadyExists, "ParameterAlreadyExists"),
    (ParameterVersionLimit, "ParameterMaxVersionLimitExceeded"),
    (ParameterLabelLimit, "ParameterVersionLabelLimitExceeded"),
    (HierarchyTooDeep, "HierarchyLevelLimitExceededException"),
    (DecryptionError, "InvalidKeyId"),
    (RateLimitedError, "ThrottlingException"),
    (AccessDeniedError, "AccessDeniedException"),
    (IncompleteSignatureError, "IncompleteSignatureException"),
    (SignatureError, "InvalidSignatureException"),
    (UnrecognizedClientError, "UnrecognizedClientException"),
    (AuthError, "UnrecognizedClientException"),
    (ValidationError, "ValidationException"),
    (ConflictError, "TooManyUpdates"),
    (NotFoundError, "ResourceNotFoundException"),
)


class SsmError(CorralError):
    """An error as Systems Manager reports it: a code, a safe message and an HTTP status."""

    def __init__(
        self, code: str, message: str, status: int = 400, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after = retry_after

    def body(self) -> JsonObject:
        """The JSON error document."""
        return {"__type": self.code, "message": self.message}


def wire_error(error: Exception) -> SsmError:
    """The one translation of any error into Systems Manager's terms."""
    if isinstance(error, SsmError):
        return error
    if isinstance(error, ValidationError) and error.field == "next_token":
        return SsmError("InvalidNextToken", error.message)
    if isinstance(error, CorralError):
        for cls, code in _CODES:
            if isinstance(error, cls):
                retry = error.retry_after if isinstance(error, RateLimitedError) else None
                return SsmError(code, error.message, retry_after=retry)
        if isinstance(error, UnavailableError):
            return SsmError("ServiceUnavailable", error.message, status=503)
    logger.error(
        "unexpected error in a Systems Manager call error=%s", type(error).__name__, exc_info=error
    )
    return SsmError("InternalServerError", "internal server error", status=500)


class WireModel(BaseModel):
    """Base of request shapes: PascalCase members, exact JSON types, nothing unknown."""

    model_config = ConfigDict(alias_generator=to_pascal, extra="forbid", strict=True, frozen=True)


RequestT = TypeVar("RequestT", bound=WireModel)


def _where(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
    return path or "request"


def describe_invalid(error: pydantic.ValidationError, operation: str) -> str:
    """A ValidationException message naming the member (never its value)."""
    problems = error.errors(include_url=False, include_input=False, include_context=False)
    first = problems[0]
    where = _where(tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        text = f"{where} is not a member of {operation}'s request"
    elif first["type"] == "missing":
        text = f"Value null at '{where}' failed to satisfy constraint: Member must not be null"
    else:
        text = f"Value at '{where}' failed to satisfy constraint: {first['msg']}"
    count = len(problems)
    return f"{count} validation error{'s' if count > 1 else ''} detected: {text}"


def parse_request(operation: str, model: type[RequestT], body: bytes) -> RequestT:
    """The operation's request from a JSON body (an empty body is `{}`)."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise SsmError("SerializationException", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise SsmError("SerializationException", "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        raise SsmError("ValidationException", describe_invalid(error, operation)) from None


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated call: what a handler may use."""

    context: ServerContext
    caller: Caller
    region: str

    def arn(self, kind: str, name: str) -> str:
        """`arn:aws:ssm:REGION:000000000000:KIND/NAME` (a leading `/` of NAME is dropped)."""
        return f"arn:aws:ssm:{self.region}:{ACCOUNT_ID}:{kind}/{name.removeprefix('/')}"


Handler = Callable[[Call, RequestT], Awaitable[JsonObject]]


@dataclass(frozen=True)
class Operation(Generic[RequestT]):
    """One Systems Manager operation: its name, Corral action, request shape and handler.

    `action` is what the call's audit record says it did; the domain service still
    checks every action (and resource) the call touches.
    """

    name: str
    action: str
    request: type[RequestT]
    handler: Handler[RequestT]

    async def run(self, call: Call, body: bytes) -> JsonObject:
        """Parse the body and run the handler."""
        return await self.handler(call, parse_request(self.name, self.request, body))


def operation(
    name: str, action: str, request: type[RequestT]
) -> Callable[[Handler[RequestT]], Operation[RequestT]]:
    """Decorator: make a handler an `Operation`."""

    def wrap(handler: Handler[RequestT]) -> Operation[RequestT]:
        return Operation(name, action, request, handler)

    return wrap
