"""The Systems Manager wire API end to end: a real `corral server`, real boto3, the AWS CLI.

Every Parameter Store operation boto3 has for parameters is driven through
`boto3.client("ssm", endpoint_url=...)` with credentials from
`corral token create --aws-credentials`: versions, selectors, labels, SecureString
with and without decryption, batch calls, paginators, filters, tags, Systems
Manager's error codes, policy (a viewer may not decrypt), revocation, and that the
secret access key and SecureString plaintext are nowhere on disk or in the log.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.harness import Server, base_env

REGION = "us-east-1"
PLAINTEXT = "e2e-plaintext-Zq81-never-on-disk"
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def aws_env() -> dict[str, str]:
    """An environment with no AWS settings of the person running the tests."""
    env = {k: v for k, v in base_env().items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ssm")
    running = Server(root / "data", root / "server.log")
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            patch.delenv(name)
        for name, value in aws_env().items():
            if name.startswith("AWS_"):
                patch.setenv(name, value)
        running.start()
        try:
            yield running
        except BaseException:
            print(running.log())  # noqa: T201 - shown by pytest only when a test fails
            raise
        finally:
            running.stop()


Client = Any  # boto3's SSM client (typed stubs are not installed)
Factory = Callable[..., Client]


@pytest.fixture(scope="module")
def creds(server: Server) -> dict[str, Any]:
    """The admin's AWS credentials."""
    created = server.cli_json("token", "create", "--aws-credentials", "--description", "e2e")
    assert created["access_key_id"].startswith("CRLK")
    assert len(created["secret_access_key"]) == 40
    return created  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def client_for(server: Server) -> Factory:
    def make(credentials: dict[str, Any], secret: str | None = None) -> Client:
        return boto3.client(
            "ssm",
            endpoint_url=server.url,
            region_name=REGION,
            aws_access_key_id=credentials["access_key_id"],
            aws_secret_access_key=secret or credentials["secret_access_key"],
            config=NO_RETRIES,
        )

    return make


@pytest.fixture(scope="module")
def ssm(client_for: Factory, creds: dict[str, Any]) -> Client:
    return client_for(creds)


def code_of(call: Callable[[], object]) -> str:
    """The Systems Manager error code a call fails with."""
    with pytest.raises(ClientError) as raised:
        call()
    return str(raised.value.response["Error"]["Code"])


def test_put_get_versions_selectors_labels_and_history(ssm: Client) -> None:
    name = "/e2e/app/url"
    assert ssm.put_parameter(Name=name, Value="http://a", Type="String")["Version"] == 1
    assert code_of(lambda: ssm.put_parameter(Name=name, Value="x")) == "ParameterAlreadyExists"
    second = ssm.put_parameter(Name=name, Value="http://b", Overwrite=True, Description="d")
    assert (second["Version"], second["Tier"]) == (2, "Standard")
    latest = ssm.get_parameter(Name=name)["Parameter"]
    assert (latest["Value"], latest["Version"], latest["Type"]) == ("http://b", 2, "String")
    assert latest["ARN"] == f"arn:aws:ssm:{REGION}:000000000000:parameter/e2e/app/url"
    assert "Selector" not in latest
    assert abs(latest["LastModifiedDate"].timestamp() - time.time()) < 60
    first = ssm.get_parameter(Name=f"{name}:1")["Parameter"]
    assert (first["Value"], first["Version"], first["Selector"]) == ("http://a", 1, ":1")

    labelled = ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=["stable", "1x"])
    assert (labelled["ParameterVersion"], labelled["InvalidLabels"]) == (1, ["1x"])
    stable = ssm.get_parameter(Name=f"{name}:stable")["Parameter"]
    assert (stable["Version"], stable["Selector"]) == (1, ":stable")
    assert ssm.label_parameter_version(Name=name, Labels=["stable"])["ParameterVersion"] == 2
    assert ssm.get_parameter(Name=f"{name}:stable")["Parameter"]["Version"] == 2  # it moved
    history = ssm.get_parameter_history(Name=name)["Parameters"]
    assert [(h["Version"], h["Labels"]) for h in history] == [(1, []), (2, ["stable"])]
    assert history[1]["Description"] == "d"
    assert history[1]["LastModifiedUser"] == "user:admin"
    unlabelled = ssm.unlabel_parameter_version(
        Name=name, ParameterVersion=2, Labels=["stable", "other"]
    )
    assert (unlabelled["RemovedLabels"], unlabelled["InvalidLabels"]) == (["stable"], ["other"])
    assert code_of(lambda: ssm.get_parameter(Name=f"{name}:stable")) == "ParameterVersionNotFound"
    assert code_of(lambda: ssm.get_parameter(Name=f"{name}:9")) == "ParameterVersionNotFound"
    assert code_of(lambda: ssm.get_parameter(Name="/e2e/none")) == "ParameterNotFound"
    assert code_of(lambda: ssm.get_parameter_history(Name="/e2e/none")) == "ParameterNotFound"
    assert (
        code_of(lambda: ssm.label_parameter_version(Name=name, ParameterVersion=7, Labels=["x"]))
        == "ParameterVersionNotFound"
    )
    labels = [f"l{i}" for i in range(10)]
    ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=labels)
    assert (
        code_of(lambda: ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=["l10"]))
        == "ParameterVersionLabelLimitExceeded"
    )


def test_rules_and_limits_have_systems_managers_codes(ssm: Client) -> None:
    deep = "/" + "/".join(f"l{i}" for i in range(16))
    assert code_of(lambda: ssm.put_parameter(Name=deep, Value="v")) == (
        "HierarchyLevelLimitExceededException"
    )
    assert code_of(lambda: ssm.put_parameter(Name="/aws/x", Value="v")) == "ValidationException"
    ssm.put_parameter(Name="/e2e/port", Value="8080", AllowedPattern=r"\d+")
    with pytest.raises(ClientError) as raised:
        ssm.put_parameter(Name="/e2e/port", Value="eighty", Overwrite=True)
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert "allowed pattern" in raised.value.response["Error"]["Message"]
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert code_of(lambda: ssm.put_parameter(Name="/e2e/big", Value="x" * 5000)) == (
        "ValidationException"
    )
    assert ssm.put_parameter(Name="/e2e/big", Value="x" * 5000, Tier="Advanced")["Tier"] == (
        "Advanced"
    )
    assert code_of(
        lambda: ssm.put_parameter(Name="/e2e/k", Value="v", Type="SecureString", KeyId="alias/no")
    ) == ("InvalidKeyId")
    # 100 versions are kept; when the oldest has a label, no new version can push it out.
    name = "/e2e/many"
    ssm.put_parameter(Name=name, Value="v1")
    ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=["pinned"])
    for version in range(2, 101):
        ssm.put_parameter(Name=name, Value=f"v{version}", Overwrite=True)
    assert code_of(lambda: ssm.put_parameter(Name=name, Value="v101", Overwrite=True)) == (
        "ParameterMaxVersionLimitExceeded"
    )
    ssm.unlabel_parameter_version(Name=name, ParameterVersion=1, Labels=["pinned"])
    assert ssm.put_parameter(Name=name, Value="v101", Overwrite=True)["Version"] == 101
    assert code_of(lambda: ssm.get_parameter(Name=f"{name}:1")) == "ParameterVersionNotFound"


def test_secure_strings_with_and_without_decryption(server: Server, ssm: Client) -> None:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}
    ) as c:
        assert c.post("/api/v1/keys", json={"name": "team"}).status_code == 201
    ssm.put_parameter(Name="/e2e/sec/db", Value=PLAINTEXT, Type="SecureString")
    ssm.put_parameter(
        Name="/e2e/sec/api", Value=PLAINTEXT + "-2", Type="SecureString", KeyId="alias/team"
    )
    plain = ssm.get_parameter(Name="/e2e/sec/db", WithDecryption=True)["Parameter"]
    assert (plain["Type"], plain["Value"]) == ("SecureString", PLAINTEXT)
    sealed = ssm.get_parameter(Name="/e2e/sec/db", WithDecryption=False)["Parameter"]["Value"]
    assert sealed.startswith("corral:v1:default:")
    assert PLAINTEXT not in sealed
    many = ssm.get_parameters(Names=["/e2e/sec/db", "/e2e/sec/api"], WithDecryption=True)
    assert sorted(p["Value"] for p in many["Parameters"]) == [PLAINTEXT, PLAINTEXT + "-2"]
    by_path = ssm.get_parameters_by_path(Path="/e2e/sec", WithDecryption=False)["Parameters"]
    assert all(p["Value"].startswith("corral:v1:") for p in by_path)
    history = ssm.get_parameter_history(Name="/e2e/sec/api", WithDecryption=True)["Parameters"]
    assert (history[0]["Value"], history[0]["KeyId"]) == (PLAINTEXT + "-2", "alias/team")
    described = ssm.describe_parameters(ParameterFilters=[{"Key": "Path", "Values": ["/e2e/sec"]}])[
        "Parameters"
    ]
    assert {p["Name"]: p["KeyId"] for p in described} == {
        "/e2e/sec/api": "alias/team",
        "/e2e/sec/db": "alias/aws/ssm",
    }
    team = ssm.describe_parameters(ParameterFilters=[{"Key": "KeyId", "Values": ["alias/team"]}])
    assert [p["Name"] for p in team["Parameters"]] == ["/e2e/sec/api"]


def test_get_parameters_reports_what_it_cannot_find(ssm: Client) -> None:
    ssm.put_parameter(Name="/e2e/batch/a", Value="a")
    ssm.put_parameter(Name="/e2e/batch/b", Value="b", Type="StringList")
    got = ssm.get_parameters(
        Names=["/e2e/batch/a", "/e2e/batch/b:1", "/e2e/batch/zz", "/e2e/batch/a:5"]
    )
    assert sorted((p["Name"], p["Value"]) for p in got["Parameters"]) == [
        ("/e2e/batch/a", "a"),
        ("/e2e/batch/b", "b"),
    ]
    assert sorted(got["InvalidParameters"]) == ["/e2e/batch/a:5", "/e2e/batch/zz"]


def test_paginators_walk_by_path_describe_and_history(ssm: Client) -> None:
    names = [f"/e2e/pg/{group}/p{i:02d}" for group in ("a", "b") for i in range(9)]
    names += ["/e2e/pg/top", "/e2e/pg/a/deeper/x"]
    for name in names:
        ssm.put_parameter(
            Name=name, Value="v", Type="SecureString" if name.endswith("3") else "String"
        )
    pages = list(
        ssm.get_paginator("get_parameters_by_path").paginate(
            Path="/e2e/pg", Recursive=True, PaginationConfig={"PageSize": 4}
        )
    )
    assert len(pages) >= 5
    assert all(len(page["Parameters"]) <= 4 for page in pages)
    walked = [p["Name"] for page in pages for p in page["Parameters"]]
    assert walked == sorted(names)
    one_level = ssm.get_parameters_by_path(Path="/e2e/pg/")["Parameters"]
    assert [p["Name"] for p in one_level] == ["/e2e/pg/top"]
    secure = ssm.get_paginator("get_parameters_by_path").paginate(
        Path="/e2e/pg",
        Recursive=True,
        ParameterFilters=[{"Key": "Type", "Option": "Equals", "Values": ["SecureString"]}],
        WithDecryption=True,
        PaginationConfig={"PageSize": 1},
    )
    assert [p["Name"] for p in secure.build_full_result()["Parameters"]] == [
        "/e2e/pg/a/p03",
        "/e2e/pg/b/p03",
    ]

    described = ssm.get_paginator("describe_parameters").paginate(
        ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": ["/e2e/pg"]}],
        PaginationConfig={"PageSize": 3},
    )
    assert [p["Name"] for p in described.build_full_result()["Parameters"]] == sorted(names)
    limited = ssm.get_paginator("describe_parameters").paginate(
        ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": ["/e2e/pg/b/"]}],
        PaginationConfig={"PageSize": 2, "MaxItems": 5},
    )
    result = limited.build_full_result()
    assert [p["Name"] for p in result["Parameters"]] == [f"/e2e/pg/b/p{i:02d}" for i in range(5)]
    assert "NextToken" in result

    name = "/e2e/pg/history"
    for version in range(1, 8):
        ssm.put_parameter(Name=name, Value=f"v{version}", Overwrite=True)
    history = ssm.get_paginator("get_parameter_history").paginate(
        Name=name, PaginationConfig={"PageSize": 2}
    )
    assert [h["Value"] for h in history.build_full_result()["Parameters"]] == [
        f"v{i}" for i in range(1, 8)
    ]
    with pytest.raises(ClientError) as raised:
        ssm.describe_parameters(NextToken="A")
    assert raised.value.response["Error"]["Code"] == "InvalidNextToken"


def test_describe_filters(ssm: Client) -> None:
    ssm.put_parameter(
        Name="/e2e/df/one", Value="1", Tags=[{"Key": "team", "Value": "red"}], Description="first"
    )
    ssm.put_parameter(
        Name="/e2e/df/two", Value="2", Type="StringList", Tags=[{"Key": "team", "Value": "blue"}]
    )
    ssm.put_parameter(Name="/e2e/df/sub/three", Value="3", Tier="Advanced")

    def names(**kwargs: Any) -> list[str]:
        return [p["Name"] for p in ssm.describe_parameters(**kwargs)["Parameters"]]

    path = {"Key": "Path", "Option": "Recursive", "Values": ["/e2e/df"]}
    assert names(ParameterFilters=[path]) == ["/e2e/df/one", "/e2e/df/sub/three", "/e2e/df/two"]
    assert names(ParameterFilters=[{"Key": "Path", "Values": ["/e2e/df"]}]) == [
        "/e2e/df/one",
        "/e2e/df/two",
    ]
    assert names(ParameterFilters=[path, {"Key": "Type", "Values": ["StringList"]}]) == [
        "/e2e/df/two"
    ]
    assert names(
        ParameterFilters=[path, {"Key": "Type", "Option": "BeginsWith", "Values": ["Str"]}]
    ) == ["/e2e/df/one", "/e2e/df/sub/three", "/e2e/df/two"]
    assert names(ParameterFilters=[path, {"Key": "Tier", "Values": ["Advanced"]}]) == [
        "/e2e/df/sub/three"
    ]
    assert names(ParameterFilters=[{"Key": "tag:team", "Values": ["red"]}]) == ["/e2e/df/one"]
    assert names(ParameterFilters=[path, {"Key": "tag:team"}]) == ["/e2e/df/one", "/e2e/df/two"]
    assert names(
        ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": ["/e2e/df/two"]}]
    ) == ["/e2e/df/two"]
    assert names(Filters=[{"Key": "Name", "Values": ["/e2e/df/one"]}]) == ["/e2e/df/one"]
    one = ssm.describe_parameters(Filters=[{"Key": "Name", "Values": ["/e2e/df/one"]}])
    meta = one["Parameters"][0]
    assert (meta["Description"], meta["Version"], meta["Tier"], meta["DataType"]) == (
        "first",
        1,
        "Standard",
        "text",
    )
    assert meta["ARN"].endswith(":parameter/e2e/df/one")
    assert (
        code_of(
            lambda: ssm.describe_parameters(ParameterFilters=[{"Key": "Label", "Values": ["x"]}])
        )
        == "InvalidFilterKey"
    )
    assert (
        code_of(
            lambda: ssm.describe_parameters(
                ParameterFilters=[{"Key": "DataType", "Values": ["text"]}]
            )
        )
        == "ValidationException"
    )
    assert names(Shared=True) == []


def test_tags(ssm: Client) -> None:
    name = "/e2e/tagged"
    ssm.put_parameter(Name=name, Value="v", Tags=[{"Key": "env", "Value": "dev"}])
    ssm.add_tags_to_resource(
        ResourceType="Parameter",
        ResourceId=name,
        Tags=[{"Key": "owner", "Value": "sre"}, {"Key": "env", "Value": "prod"}],
    )
    listed = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)
    assert listed["TagList"] == [{"Key": "env", "Value": "prod"}, {"Key": "owner", "Value": "sre"}]
    arn = ssm.get_parameter(Name=name)["Parameter"]["ARN"]
    ssm.remove_tags_from_resource(ResourceType="Parameter", ResourceId=arn, TagKeys=["env", "x"])
    assert ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)["TagList"] == [
        {"Key": "owner", "Value": "sre"}
    ]
    assert code_of(
        lambda: ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId="/e2e/no")
    ) == ("InvalidResourceId")
    assert code_of(
        lambda: ssm.add_tags_to_resource(ResourceType="Document", ResourceId="d", Tags=[])
    ) == ("InvalidResourceType")
    assert code_of(
        lambda: ssm.put_parameter(
            Name=name, Value="w", Overwrite=True, Tags=[{"Key": "a", "Value": "b"}]
        )
    ) == ("ValidationException")
    too_many = [{"Key": f"k{i}", "Value": "v"} for i in range(50)]
    assert code_of(
        lambda: ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=name, Tags=too_many)
    ) == ("TooManyTagsError")


def test_delete_parameter_and_parameters(ssm: Client) -> None:
    for suffix in ("a", "b", "c"):
        ssm.put_parameter(Name=f"/e2e/del/{suffix}", Value="v")
    ssm.delete_parameter(Name="/e2e/del/a")
    assert code_of(lambda: ssm.get_parameter(Name="/e2e/del/a")) == "ParameterNotFound"
    assert code_of(lambda: ssm.delete_parameter(Name="/e2e/del/a")) == "ParameterNotFound"
    result = ssm.delete_parameters(Names=["/e2e/del/b", "/e2e/del/c", "/e2e/del/zz"])
    assert (result["DeletedParameters"], result["InvalidParameters"]) == (
        ["/e2e/del/b", "/e2e/del/c"],
        ["/e2e/del/zz"],
    )


def test_policy_applies_a_viewer_may_not_decrypt_or_write(
    server: Server, ssm: Client, client_for: Factory
) -> None:
    ssm.put_parameter(Name="/e2e/pol/secret", Value=PLAINTEXT, Type="SecureString", Overwrite=True)
    server.cli_json("user", "create", "vera", "--role", "viewer")
    vera = client_for(server.cli_json("token", "create", "--aws-credentials", "--user", "vera"))
    assert vera.get_parameter(Name="/e2e/pol/secret")["Parameter"]["Value"].startswith("corral:")
    with pytest.raises(ClientError) as raised:
        vera.get_parameter(Name="/e2e/pol/secret", WithDecryption=True)
    error = raised.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert (
        "user:vera may not parameter:GetDecrypted on parameter:/e2e/pol/secret" in error["Message"]
    )
    assert code_of(lambda: vera.put_parameter(Name="/e2e/pol/x", Value="v")) == (
        "AccessDeniedException"
    )
    assert code_of(lambda: vera.delete_parameter(Name="/e2e/pol/secret")) == "AccessDeniedException"
    # The audit log names the operation and the decision.
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}
    ) as c:
        rows = c.get("/api/v1/audit", params={"principal": "user:vera", "limit": "50"}).json()
    denied = [r for r in rows["records"] if r["outcome"] == "denied"]
    assert {(r["action"], r["details"]["ssm_operation"]) for r in denied} == {
        ("parameter:Get", "GetParameter"),
        ("parameter:Put", "PutParameter"),
        ("parameter:Delete", "DeleteParameter"),
    }


def test_revoked_disabled_or_wrong_credentials_fail(
    server: Server, client_for: Factory, creds: dict[str, Any]
) -> None:
    server.cli_json("user", "create", "otto", "--role", "operator")
    issued = server.cli_json("token", "create", "--aws-credentials", "--user", "otto")
    otto = client_for(issued)
    assert otto.describe_parameters(MaxResults=1)["Parameters"] is not None
    listed = server.cli_json("token", "list", "--user", "otto")
    assert issued["access_key_id"] in [t["access_key_id"] for t in listed]
    assert all("secret_access_key" not in t for t in listed)

    wrong_secret = client_for(creds, secret="x" * 40)
    assert code_of(lambda: wrong_secret.describe_parameters()) == "InvalidSignatureException"

    tampered = client_for(creds)

    def tamper(request: Any, **_kwargs: Any) -> None:
        request.body = request.body.replace(b"/e2e/app/url", b"/e2e/app/uri")

    tampered.meta.events.register("before-send.ssm.GetParameter", tamper)
    assert code_of(lambda: tampered.get_parameter(Name="/e2e/app/url")) == (
        "InvalidSignatureException"
    )

    assert server.cli("user", "disable", "otto").returncode == 0
    assert code_of(lambda: otto.describe_parameters()) == "UnrecognizedClientException"
    assert server.cli("user", "enable", "otto").returncode == 0
    assert otto.describe_parameters(MaxResults=1) is not None
    assert server.cli("token", "revoke", issued["token_id"]).returncode == 0
    assert code_of(lambda: otto.describe_parameters()) == "UnrecognizedClientException"
    unknown = client_for({"access_key_id": "CRLKZZZZZZZZZZZZZZZZ", "secret_access_key": "s" * 40})
    assert code_of(lambda: unknown.describe_parameters()) == "UnrecognizedClientException"


def test_endpoint_from_the_environment(
    server: Server, creds: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Terraform and scripts do: AWS_ENDPOINT_URL_SSM instead of endpoint_url."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["secret_access_key"])
    client = boto3.client("ssm", region_name="eu-north-1", config=NO_RETRIES)
    client.put_parameter(Name="/e2e/env", Value="from-env", Overwrite=True)
    parameter = client.get_parameter(Name="/e2e/env")["Parameter"]
    assert parameter["ARN"] == "arn:aws:ssm:eu-north-1:000000000000:parameter/e2e/env"


def test_the_aws_cli(server: Server, creds: dict[str, Any], ssm: Client) -> None:
    pytest.importorskip("awscli")
    ssm.put_parameter(Name="/e2e/cli/secret", Value=PLAINTEXT, Type="SecureString", Overwrite=True)
    env = aws_env()
    env.update(
        AWS_ACCESS_KEY_ID=creds["access_key_id"],
        AWS_SECRET_ACCESS_KEY=creds["secret_access_key"],
        AWS_DEFAULT_REGION=REGION,
    )
    aws = [sys.executable, "-m", "awscli", "ssm", "--endpoint-url", server.url, "--output", "json"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*aws, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    got = run("get-parameter", "--name", "/e2e/cli/secret", "--with-decryption")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["Parameter"]["Value"] == PLAINTEXT
    put = run("put-parameter", "--name", "/e2e/cli/plain", "--value", "hi", "--type", "String")
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["Version"] == 1
    listed = run("get-parameters-by-path", "--path", "/e2e/cli", "--recursive")
    assert [p["Name"] for p in json.loads(listed.stdout)["Parameters"]] == [
        "/e2e/cli/plain",
        "/e2e/cli/secret",
    ]
    missing = run("get-parameter", "--name", "/e2e/cli/none")
    assert missing.returncode != 0
    assert "ParameterNotFound" in missing.stderr


def test_secrets_are_nowhere_on_disk_or_in_the_log(server: Server, creds: dict[str, Any]) -> None:
    """Runs last: after every call above, neither the secret access key nor a
    SecureString's plaintext is in any file of the data directory or the server log."""
    data_dir = server.data_dir
    secret = creds["secret_access_key"].encode()
    leaks = [
        str(path)
        for path in [*data_dir.rglob("*"), server.log_path]
        if path.is_file()
        and (secret in path.read_bytes() or PLAINTEXT.encode() in path.read_bytes())
    ]
    assert leaks == []
    # What is stored is the sealed secret, under the aws-credentials key.
    with sqlite3.connect(data_dir / "corral.db") as conn:
        sealed = conn.execute(
            "SELECT secret_sealed FROM api_tokens WHERE access_key_id = ?",
            (creds["access_key_id"],),
        ).fetchone()[0]
    assert sealed.startswith("corral:v1:aws-credentials:")
    assert (data_dir / "keys" / "aws-credentials.key").stat().st_mode & 0o077 == 0
