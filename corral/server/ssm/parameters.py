"""Parameter Store operations of the Systems Manager wire API, over `ParameterService`.

Each handler translates a request shape into one service call and the result into
the response shape; names, limits, versions, labels, encryption and policy checks
are the service's. Wire-only rules:

* `KeyId` is shown as `alias/aws/ssm` for the default key and `alias/NAME` otherwise;
  `alias/aws/ssm`, `aws/ssm`, `alias/NAME` and `NAME` are accepted.
* ParameterFilters map onto the service's `ParameterFilter`. DescribeParameters
  takes Name (Equals, BeginsWith), Path (OneLevel, Recursive), Type and Tier
  (Equals, BeginsWith), KeyId (Equals) and `tag:KEY` (Equals; no Values: the tag
  is set); GetParametersByPath takes Type and KeyId. Keys and options Systems
  Manager refuses give InvalidFilterKey / InvalidFilterOption; the ones it accepts
  that Corral cannot serve (Label, DataType, Name Contains, ...) give
  ValidationException naming them.
* Tagging is for `ResourceType: Parameter` only; ResourceId is the name (or its ARN).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field, TypeAdapter

from corral.errors import NotFoundError, ValidationError
from corral.params import DEFAULT_KEY, HistoryEntry, ParameterValue, PutRequest, key_name
from corral.params.names import TIERS, TYPES, validate_label, validate_path
from corral.server.api.common import Tags
from corral.server.api.params import policy_status
from corral.server.ssm.wire import Call, JsonObject, Operation, SsmError, WireModel, operation
from corral.store import ParameterRecord
from corral.store.params import ParameterFilter, ParameterNotFound, ParameterVersionNotFound

ParameterType = Literal["String", "StringList", "SecureString"]
ParameterTier = Literal["Standard", "Advanced", "Intelligent-Tiering"]
Name = Annotated[str, Field(min_length=1, max_length=2048)]
Label = Annotated[str, Field(min_length=1, max_length=100)]
FilterValue = Annotated[str, Field(min_length=1, max_length=1024)]
NextToken = Annotated[str, Field(max_length=4096)]

_TAGS: TypeAdapter[dict[str, str]] = TypeAdapter(Tags)


# --- shapes -------------------------------------------------------------------------


class Tag(WireModel):
    """`{"Key": ..., "Value": ...}`."""

    key: str = Field(min_length=1, max_length=128)
    value: str = Field(max_length=256)


class StringFilter(WireModel):
    """ParameterStringFilter."""

    key: str = Field(
        min_length=1, max_length=132, pattern=r"^(tag:.+|Name|Type|KeyId|Path|Label|Tier|DataType)$"
    )
    option: str | None = Field(default=None, min_length=1, max_length=10)
    values: list[FilterValue] | None = Field(default=None, min_length=1, max_length=50)


class LegacyFilter(WireModel):
    """ParametersFilter (deprecated by Systems Manager, still sent by old scripts)."""

    key: Literal["Name", "Type", "KeyId"]
    values: list[FilterValue] = Field(min_length=1, max_length=50)


class PutParameterRequest(WireModel):
    """PutParameter."""

    name: Name
    value: str
    description: str | None = Field(default=None, max_length=1024)
    type: ParameterType | None = None
    key_id: str | None = Field(default=None, min_length=1, max_length=256)
    overwrite: bool = False
    allowed_pattern: str | None = Field(default=None, max_length=1024)
    tags: list[Tag] = Field(default_factory=list, max_length=1000)
    tier: ParameterTier | None = None
    policies: str | None = Field(default=None, min_length=1, max_length=4096)
    data_type: str | None = Field(default=None, max_length=128)


class GetParameterRequest(WireModel):
    """GetParameter."""

    name: Name
    with_decryption: bool = False


class GetParametersRequest(WireModel):
    """GetParameters."""

    names: list[Name] = Field(min_length=1, max_length=10)
    with_decryption: bool = False


class GetParametersByPathRequest(WireModel):
    """GetParametersByPath."""

    path: Name
    recursive: bool = False
    parameter_filters: list[StringFilter] = Field(default_factory=list, max_length=50)
    with_decryption: bool = False
    max_results: int = Field(default=10, ge=1, le=10)
    next_token: NextToken | None = None


class DescribeParametersRequest(WireModel):
    """DescribeParameters."""

    filters: list[LegacyFilter] = Field(default_factory=list, max_length=50)
    parameter_filters: list[StringFilter] = Field(default_factory=list, max_length=50)
    max_results: int = Field(default=50, ge=1, le=50)
    next_token: NextToken | None = None
    shared: bool = False


class DeleteParameterRequest(WireModel):
    """DeleteParameter."""

    name: Name


class DeleteParametersRequest(WireModel):
    """DeleteParameters."""

    names: list[Name] = Field(min_length=1, max_length=10)


class GetParameterHistoryRequest(WireModel):
    """GetParameterHistory."""

    name: Name
    with_decryption: bool = False
    max_results: int = Field(default=50, ge=1, le=50)
    next_token: NextToken | None = None


class LabelParameterVersionRequest(WireModel):
    """LabelParameterVersion."""

    name: Name
    parameter_version: int | None = Field(default=None, ge=1)
    labels: list[Label] = Field(min_length=1, max_length=10)


class UnlabelParameterVersionRequest(WireModel):
    """UnlabelParameterVersion."""

    name: Name
    parameter_version: int = Field(ge=1)
    labels: list[Label] = Field(min_length=1, max_length=10)


class ResourceRequest(WireModel):
    """ListTagsForResource."""

    resource_type: str = Field(min_length=1, max_length=64)
    resource_id: str = Field(min_length=1, max_length=2100)


class AddTagsRequest(ResourceRequest):
    """AddTagsToResource."""

    tags: list[Tag] = Field(max_length=1000)


class RemoveTagsRequest(ResourceRequest):
    """RemoveTagsFromResource."""

    tag_keys: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(max_length=1000)


# --- responses ------------------------------------------------------------------------


def wire_key_id(key: str | None) -> str | None:
    """How a key is named on the wire."""
    if key is None:
        return None
    return "alias/aws/ssm" if key == DEFAULT_KEY else f"alias/{key}"


def _present(**members: object) -> JsonObject:
    """The members that are set (Systems Manager leaves absent members out)."""
    return {k: v for k, v in members.items() if v is not None}


def _parameter(call: Call, v: ParameterValue) -> JsonObject:
    return _present(
        Name=v.name,
        Type=v.type,
        Value=v.value,
        Version=v.version,
        Selector=v.selector,
        LastModifiedDate=v.last_modified,
        ARN=call.arn("parameter", v.name),
        DataType=v.data_type,
    )


def _policies(policies: list[dict[str, object]]) -> list[JsonObject]:
    return [
        {"PolicyText": json.dumps(p, sort_keys=True), "PolicyType": str(p.get("Type"))}
        for p in policies
    ]


def _metadata(call: Call, meta: ParameterRecord) -> JsonObject:
    return _present(
        Name=meta.name,
        ARN=call.arn("parameter", meta.name),
        Type=meta.type,
        KeyId=wire_key_id(meta.key_id),
        LastModifiedDate=meta.last_modified,
        LastModifiedUser=meta.last_modified_by,
        Description=meta.description or None,
        AllowedPattern=meta.allowed_pattern or None,
        Version=meta.version,
        Tier=meta.tier,
        Policies=[
            {
                "PolicyText": p["policy_text"],
                "PolicyType": p["type"],
                "PolicyStatus": p["status"],
            }
            for p in policy_status(meta)
        ],
        DataType=meta.data_type,
    )


def _history(h: HistoryEntry) -> JsonObject:
    return _present(
        Name=h.value.name,
        Type=h.value.type,
        KeyId=wire_key_id(h.key_id),
        LastModifiedDate=h.value.last_modified,
        LastModifiedUser=h.last_modified_by,
        Description=h.description or None,
        Value=h.value.value,
        AllowedPattern=h.allowed_pattern or None,
        Version=h.value.version,
        Labels=list(h.value.labels),
        Tier=h.tier,
        Policies=_policies(h.policies),
        DataType=h.value.data_type,
    )


# --- translation helpers ---------------------------------------------------------------


@contextlib.contextmanager
def key_errors() -> Iterator[None]:
    """A key that does not exist or cannot be named is Systems Manager's InvalidKeyId."""
    try:
        yield
    except (ParameterNotFound, ParameterVersionNotFound):
        raise
    except NotFoundError as error:
        raise SsmError("InvalidKeyId", error.message) from None
    except ValidationError as error:
        if error.field == "key_id":
            raise SsmError("InvalidKeyId", error.message) from None
        raise


def tags_of(tags: list[Tag]) -> dict[str, str]:
    """Tags as a mapping, under the same rules as the native API's."""
    mapping: dict[str, str] = {}
    for tag in tags:
        if tag.key in mapping:
            raise SsmError("ValidationException", f"tag key {tag.key[:40]!r} is given twice")
        mapping[tag.key] = tag.value
    try:
        return _TAGS.validate_python(mapping)
    except pydantic.ValidationError as error:
        message = str(error.errors(include_url=False, include_input=False)[0]["msg"])
        raise SsmError("ValidationException", message.removeprefix("Value error, ")) from None


def parameter_name(resource_type: str, resource_id: str) -> str:
    """The parameter a tagging request names (by name or by ARN)."""
    if resource_type != "Parameter":
        raise SsmError(
            "InvalidResourceType",
            f"Corral tags resources of type Parameter only, not {resource_type[:40]!r}",
        )
    if not resource_id.startswith("arn:"):
        return resource_id
    parts = resource_id.split(":", 5)
    if len(parts) == 6 and parts[2] == "ssm" and parts[5].startswith("parameter/"):
        rest = parts[5].removeprefix("parameter/")
        return "/" + rest if "/" in rest else rest
    raise SsmError("InvalidResourceId", "the ResourceId is not a parameter name or ARN")


@contextlib.contextmanager
def resource_errors() -> Iterator[None]:
    """A missing parameter is InvalidResourceId for the tagging operations."""
    try:
        yield
    except NotFoundError as error:
        raise SsmError("InvalidResourceId", error.message) from None
    except ValidationError as error:
        if error.field == "tags":
            raise SsmError("TooManyTagsError", error.message) from None
        if error.field == "name":
            raise SsmError("InvalidResourceId", error.message) from None
        raise


# --- filters ------------------------------------------------------------------------------

# Keys Systems Manager accepts per operation ("tag" stands for every `tag:KEY`).
_DESCRIBE_KEYS = frozenset({"Name", "Type", "KeyId", "Path", "Tier", "DataType", "tag"})
_BY_PATH_KEYS = frozenset({"Type", "KeyId", "Label"})


def _unsupported(what: str) -> SsmError:
    return SsmError("ValidationException", f"{what} is not supported by Corral")


def _starting_with(allowed: tuple[str, ...], values: list[str], option: str) -> tuple[str, ...]:
    if option == "Equals":
        return tuple(v for v in allowed if v in values)
    return tuple(v for v in allowed if any(v.startswith(prefix) for prefix in values))


class _FilterBuilder:
    """Accumulates ParameterStringFilters into one ParameterFilter."""

    def __init__(self, operation: str, keys: frozenset[str]) -> None:
        self.operation = operation
        self.keys = keys
        self.seen: set[str] = set()
        self.path: str | None = None
        self.recursive = False
        self.types: tuple[str, ...] | None = None
        self.tiers: tuple[str, ...] | None = None
        self.key_ids: tuple[str, ...] = ()
        self.name_prefix: str | None = None
        self.names: tuple[str, ...] = ()
        self.tags: list[tuple[str, tuple[str, ...]]] = []

    def add(self, item: StringFilter) -> None:
        """Add one filter; SsmError naming it when it is invalid or not served."""
        key = item.key
        is_tag = key.startswith("tag:")
        if ("tag" if is_tag else key) not in self.keys:
            raise SsmError(
                "InvalidFilterKey", f"the filter key {key} is not valid for {self.operation}"
            )
        if key in self.seen:
            raise _unsupported(f"giving the filter key {key[:40]} twice")
        self.seen.add(key)
        default = "OneLevel" if key == "Path" else "Equals"
        option = item.option or default
        valid = ("OneLevel", "Recursive") if key == "Path" else ("Equals", "BeginsWith", "Contains")
        if option not in valid or (option == "Contains" and key != "Name"):
            raise SsmError(
                "InvalidFilterOption",
                f"the filter option {option[:10]} is not valid for {key[:40]}",
            )
        values = list(item.values or [])
        if is_tag:
            self._tag(key.removeprefix("tag:"), option, values)
        elif key in ("Type", "Tier"):
            self._enumerated(key, option, values)
        elif key == "KeyId":
            self._key_id(option, values)
        elif key == "Name":
            self._name(option, values)
        elif key == "Path":
            self._path(option, values)
        else:  # Label, DataType: valid for Systems Manager, not served by Corral
            raise _unsupported(f"the {key} filter")

    def _require(self, key: str, values: list[str]) -> None:
        if not values:
            raise SsmError("InvalidFilterValue", f"the {key} filter needs Values")

    def _tag(self, tag: str, option: str, values: list[str]) -> None:
        if option != "Equals":
            raise _unsupported(f"the tag filter option {option}")
        self.tags.append((tag, tuple(values)))

    def _enumerated(self, key: str, option: str, values: list[str]) -> None:
        self._require(key, values)
        allowed = TYPES if key == "Type" else TIERS
        if option == "Equals" and any(v not in allowed for v in values):
            raise SsmError("InvalidFilterValue", f"{key} values must be among {', '.join(allowed)}")
        chosen = _starting_with(allowed, values, option)
        if key == "Type":
            self.types = chosen
        else:
            self.tiers = chosen

    def _key_id(self, option: str, values: list[str]) -> None:
        self._require("KeyId", values)
        if option != "Equals":
            raise _unsupported(f"the KeyId filter option {option}")
        try:
            self.key_ids = tuple(key_name(v) for v in values)
        except ValidationError as error:
            raise SsmError("InvalidFilterValue", error.message) from None

    def _name(self, option: str, values: list[str]) -> None:
        self._require("Name", values)
        if option == "Contains":
            raise _unsupported("the Name filter option Contains")
        if option == "BeginsWith":
            if len(values) != 1:
                raise _unsupported("the Name filter with BeginsWith and several Values")
            self.name_prefix = values[0].strip()
        else:
            self.names = tuple(v.strip() for v in values)

    def _path(self, option: str, values: list[str]) -> None:
        self._require("Path", values)
        if len(values) != 1:
            raise _unsupported("the Path filter with several Values")
        try:
            self.path = validate_path(values[0], "ParameterFilters.Path")
        except ValidationError as error:
            raise SsmError("InvalidFilterValue", error.message) from None
        self.recursive = option == "Recursive"

    def build(self) -> ParameterFilter | None:
        """The filter; None when it can match nothing (e.g. Type BeginsWith "X")."""
        if self.types == () or self.tiers == ():
            return None
        return ParameterFilter(
            path=self.path,
            recursive=self.recursive,
            types=self.types or (),
            key_ids=self.key_ids,
            tiers=self.tiers or (),
            name_prefix=self.name_prefix,
            names_equal=self.names,
            tags=tuple(self.tags),
        )


def describe_filter(request: DescribeParametersRequest) -> ParameterFilter | None:
    """The service filter of a DescribeParameters request (None: matches nothing)."""
    if request.filters and request.parameter_filters:
        raise SsmError(
            "ValidationException", "use either Filters or ParameterFilters in one request, not both"
        )
    builder = _FilterBuilder("DescribeParameters", _DESCRIBE_KEYS)
    for legacy in request.filters:
        builder.add(StringFilter.model_validate({"Key": legacy.key, "Values": legacy.values}))
    for item in request.parameter_filters:
        builder.add(item)
    return builder.build()


def by_path_filter(request: GetParametersByPathRequest) -> ParameterFilter | None:
    """The service filter of a GetParametersByPath request (None: matches nothing)."""
    builder = _FilterBuilder("GetParametersByPath", _BY_PATH_KEYS)
    for item in request.parameter_filters:
        builder.add(item)
    return builder.build()


def _page(items: list[JsonObject], next_token: str | None, key: str = "Parameters") -> JsonObject:
    return _present(**{key: items, "NextToken": next_token})


# --- operations ---------------------------------------------------------------------------


@operation("PutParameter", "parameter:Put", PutParameterRequest)
async def put_parameter(call: Call, request: PutParameterRequest) -> JsonObject:
    """Create a parameter, or add a version with Overwrite."""
    with key_errors():
        result = await call.context.params.put(
            call.caller,
            PutRequest(
                name=request.name,
                value=request.value,
                type=request.type,
                key_id=request.key_id,
                overwrite=request.overwrite,
                description=request.description,
                allowed_pattern=request.allowed_pattern,
                tags=tags_of(request.tags),
                tier=request.tier,
                policies=request.policies,
                data_type=request.data_type,
            ),
        )
    return {"Version": result.version, "Tier": result.tier}


@operation("GetParameter", "parameter:Get", GetParameterRequest)
async def get_parameter(call: Call, request: GetParameterRequest) -> JsonObject:
    """One parameter: `NAME`, `NAME:VERSION` or `NAME:LABEL`."""
    with key_errors():
        value = await call.context.params.get(call.caller, request.name, request.with_decryption)
    return {"Parameter": _parameter(call, value)}


@operation("GetParameters", "parameter:Get", GetParametersRequest)
async def get_parameters(call: Call, request: GetParametersRequest) -> JsonObject:
    """Up to 10 parameters; names that do not resolve come back as InvalidParameters."""
    with key_errors():
        found, invalid = await call.context.params.get_many(
            call.caller, request.names, request.with_decryption
        )
    return {"Parameters": [_parameter(call, v) for v in found], "InvalidParameters": invalid}


@operation("GetParametersByPath", "parameter:Get", GetParametersByPathRequest)
async def get_parameters_by_path(call: Call, request: GetParametersByPathRequest) -> JsonObject:
    """The latest versions under a path that the caller may read."""
    filters = by_path_filter(request)
    if filters is None:
        validate_path(request.path)
        return {"Parameters": []}
    with key_errors():
        page = await call.context.params.get_by_path(
            call.caller,
            request.path,
            request.recursive,
            request.with_decryption,
            request.max_results,
            request.next_token,
            filters,
        )
    return _page([_parameter(call, v) for v in page.items], page.next_token)


@operation("DescribeParameters", "parameter:List", DescribeParametersRequest)
async def describe_parameters(call: Call, request: DescribeParametersRequest) -> JsonObject:
    """Metadata of the parameters the caller may list (nothing is shared with anyone)."""
    filters = describe_filter(request)
    if filters is None or request.shared:
        return {"Parameters": []}
    page = await call.context.params.describe(
        call.caller, filters, request.max_results, request.next_token
    )
    return _page([_metadata(call, m) for m in page.items], page.next_token)


@operation("GetParameterHistory", "parameter:Get", GetParameterHistoryRequest)
async def get_parameter_history(call: Call, request: GetParameterHistoryRequest) -> JsonObject:
    """Every kept version, oldest first."""
    with key_errors():
        page = await call.context.params.history(
            call.caller,
            request.name,
            request.with_decryption,
            request.max_results,
            request.next_token,
        )
    return _page([_history(h) for h in page.items], page.next_token)


@operation("DeleteParameter", "parameter:Delete", DeleteParameterRequest)
async def delete_parameter(call: Call, request: DeleteParameterRequest) -> JsonObject:
    """Delete one parameter (every version)."""
    _deleted, missing = await call.context.params.delete(call.caller, [request.name])
    if missing:
        raise SsmError("ParameterNotFound", f"parameter {missing[0]} does not exist")
    return {}


@operation("DeleteParameters", "parameter:Delete", DeleteParametersRequest)
async def delete_parameters(call: Call, request: DeleteParametersRequest) -> JsonObject:
    """Delete up to 10 parameters; names that do not exist come back as InvalidParameters."""
    deleted, missing = await call.context.params.delete(call.caller, request.names)
    return {"DeletedParameters": deleted, "InvalidParameters": missing}


@operation("LabelParameterVersion", "parameter:Label", LabelParameterVersionRequest)
async def label_parameter_version(call: Call, request: LabelParameterVersionRequest) -> JsonObject:
    """Attach labels to a version (default: the latest); malformed labels are returned."""
    valid: list[str] = []
    invalid: list[str] = []
    first_problem: ValidationError | None = None
    for label in request.labels:
        try:
            valid.append(validate_label(label))
        except ValidationError as error:
            invalid.append(label)
            first_problem = first_problem or error
    if not valid:
        assert first_problem is not None
        raise first_problem
    version, refused = await call.context.params.label(
        call.caller, request.name, request.parameter_version, valid
    )
    return {"InvalidLabels": invalid + refused, "ParameterVersion": version}


@operation("UnlabelParameterVersion", "parameter:Label", UnlabelParameterVersionRequest)
async def unlabel_parameter_version(
    call: Call, request: UnlabelParameterVersionRequest
) -> JsonObject:
    """Remove labels from a version; labels it does not have are returned as invalid."""
    removed, invalid = await call.context.params.unlabel(
        call.caller, request.name, request.parameter_version, request.labels
    )
    return {"RemovedLabels": removed, "InvalidLabels": invalid}


@operation("AddTagsToResource", "parameter:Tag", AddTagsRequest)
async def add_tags_to_resource(call: Call, request: AddTagsRequest) -> JsonObject:
    """Add (or overwrite) a parameter's tags."""
    name = parameter_name(request.resource_type, request.resource_id)
    tags = tags_of(request.tags)
    with resource_errors():
        await call.context.params.tag(call.caller, name, tags, [])
    return {}


@operation("ListTagsForResource", "parameter:List", ResourceRequest)
async def list_tags_for_resource(call: Call, request: ResourceRequest) -> JsonObject:
    """A parameter's tags, by key."""
    name = parameter_name(request.resource_type, request.resource_id)
    with resource_errors():
        tags = await call.context.params.tags(call.caller, name)
    return {"TagList": [{"Key": k, "Value": tags[k]} for k in sorted(tags)]}


@operation("RemoveTagsFromResource", "parameter:Tag", RemoveTagsRequest)
async def remove_tags_from_resource(call: Call, request: RemoveTagsRequest) -> JsonObject:
    """Remove tags by key (keys that are not set are ignored)."""
    name = parameter_name(request.resource_type, request.resource_id)
    with resource_errors():
        await call.context.params.tag(call.caller, name, {}, request.tag_keys)
    return {}


OPERATIONS: tuple[Operation[Any], ...] = (
    put_parameter,
    get_parameter,
    get_parameters,
    get_parameters_by_path,
    describe_parameters,
    get_parameter_history,
    delete_parameter,
    delete_parameters,
    label_parameter_version,
    unlabel_parameter_version,
    add_tags_to_resource,
    list_tags_for_resource,
    remove_tags_from_resource,
)
