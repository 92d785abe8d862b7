"""The server's TLS material: generation, reuse, permissions, reissue, operator files."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from corral.errors import ValidationError
from corral.server import tls
from corral.server.app import create_app
from corral.server.config import ServerConfig, is_loopback_host
from tests.server.conftest import Api, fast_config

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def generated(tmp_path: Path, host: str = "0.0.0.0", **overrides: object) -> tls.ServerTls:
    config = ServerConfig(data_dir=tmp_path / "data", host=host, **overrides)  # type: ignore[arg-type]
    served = tls.prepare_server_tls(config, NOW)
    assert served is not None
    return served


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in san}


@pytest.mark.parametrize(
    ("host", "mode", "cert", "enabled"),
    [
        ("127.0.0.1", "auto", None, False),
        ("127.0.0.2", "auto", None, False),
        ("::1", "auto", None, False),
        ("[::1]", "auto", None, False),
        ("localhost", "auto", None, False),
        ("0.0.0.0", "auto", None, True),
        ("", "auto", None, True),
        ("::", "auto", None, True),
        ("10.1.2.3", "auto", None, True),
        ("corral.example", "auto", None, True),
        ("127.0.0.1", "on", None, True),
        ("0.0.0.0", "off", None, False),
        ("127.0.0.1", "auto", Path("cert.pem"), True),
    ],
)
def test_tls_mode(host: str, mode: str, cert: Path | None, enabled: bool) -> None:
    config = ServerConfig(data_dir=Path("d"), host=host, tls=mode, tls_cert=cert)
    assert config.tls_enabled is enabled


def test_loopback_host_names() -> None:
    assert is_loopback_host("LOCALHOST.")
    assert not is_loopback_host("localhost.example")
    assert not is_loopback_host("0.0.0.0")


def test_off_on_loopback_gives_nothing(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "data")
    assert tls.prepare_server_tls(config) is None
    assert not (tmp_path / "data").exists()


def test_first_start_generates_a_ca_and_a_server_certificate(tmp_path: Path) -> None:
    served = generated(tmp_path, host="10.0.0.7", tls_san=("corral.example", "192.0.2.1"))
    tls_dir = tmp_path / "data" / "tls"
    assert served.source == "generated"
    assert served.cert_file == tls_dir / "server.crt"
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tls_dir / key).stat().st_mode) == 0o600
    assert not list(tls_dir.glob(".*.tmp"))

    ca, server = load(tls_dir / "ca.crt"), load(tls_dir / "server.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.not_valid_after_utc - NOW > dt.timedelta(days=3000)
    server.verify_directly_issued_by(ca)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert {"localhost", "127.0.0.1", "::1", "10.0.0.7", "corral.example", "192.0.2.1"} <= names(
        server
    )
    assert served.ca_pem == (tls_dir / "ca.crt").read_bytes()


def test_fingerprint_is_sha256_of_the_ca_der(tmp_path: Path) -> None:
    served = generated(tmp_path)
    der = load(tmp_path / "data" / "tls" / "ca.crt").public_bytes(serialization.Encoding.DER)
    assert served.ca_fingerprint == "sha256:" + hashlib.sha256(der).hexdigest()
    assert len(served.ca_fingerprint) == len("sha256:") + 64
    assert served.ca_fingerprint == tls.pem_fingerprint(served.ca_pem)


def test_later_starts_reuse_everything(tmp_path: Path) -> None:
    first = generated(tmp_path)
    files = {p.name: p.read_bytes() for p in (tmp_path / "data" / "tls").iterdir()}
    second = generated(tmp_path)
    assert second == first
    assert {p.name: p.read_bytes() for p in (tmp_path / "data" / "tls").iterdir()} == files


def test_changed_names_reissue_the_server_certificate_with_the_same_ca(tmp_path: Path) -> None:
    first = generated(tmp_path)
    old_key = (tmp_path / "data" / "tls" / "server.key").read_bytes()
    second = generated(tmp_path, tls_san=("new.example",))
    assert second.ca_fingerprint == first.ca_fingerprint
    assert "new.example" in names(load(second.cert_file))
    assert (tmp_path / "data" / "tls" / "server.key").read_bytes() != old_key


def test_a_certificate_near_expiry_is_reissued(tmp_path: Path) -> None:
    first = generated(tmp_path)
    old = load(first.cert_file)
    later = old.not_valid_after_utc - dt.timedelta(days=10)
    config = ServerConfig(data_dir=tmp_path / "data", host="0.0.0.0")
    second = tls.prepare_server_tls(config, later)
    assert second is not None
    assert second.ca_fingerprint == first.ca_fingerprint
    assert load(second.cert_file).not_valid_after_utc > old.not_valid_after_utc


def test_a_crash_between_key_and_certificate_is_repaired(tmp_path: Path) -> None:
    first = generated(tmp_path)
    tls_dir = tmp_path / "data" / "tls"
    # A new key landed but the process died before its certificate did.
    other = ec.generate_private_key(ec.SECP256R1())
    (tls_dir / "server.key").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    second = generated(tmp_path)
    assert second.ca_fingerprint == first.ca_fingerprint
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(second.cert_file, second.key_file)
    # No CA certificate yet (first start died after ca.key): a new CA, never a half one.
    (tls_dir / "ca.crt").unlink()
    third = generated(tmp_path)
    assert third.ca_fingerprint != first.ca_fingerprint
    load(third.cert_file).verify_directly_issued_by(load(tls_dir / "ca.crt"))


def test_a_ca_without_its_key_stops_the_start(tmp_path: Path) -> None:
    generated(tmp_path)
    (tmp_path / "data" / "tls" / "ca.key").unlink()
    with pytest.raises(ValidationError, match=r"ca\.key is missing"):
        generated(tmp_path)


def operator_files(tmp_path: Path, name: str) -> tls.ServerTls:
    """A CA and server certificate generated in a separate directory, as an operator's."""
    return tls.ensure_generated_tls(
        tmp_path / name, tls.subject_names("corral.example"), dt.datetime.now(dt.UTC)
    )


def test_operator_certificate_with_its_ca(tmp_path: Path) -> None:
    own = operator_files(tmp_path, "pki")
    config = ServerConfig(
        data_dir=tmp_path / "data",
        tls_cert=own.cert_file,
        tls_key=own.key_file,
        tls_ca=tmp_path / "pki" / "ca.crt",
    )
    served = tls.prepare_server_tls(config)
    assert served is not None
    assert served.source == "operator"
    assert served.cert_file == own.cert_file
    assert served.ca_fingerprint == own.ca_fingerprint
    assert not (tmp_path / "data" / "tls").exists()


def test_operator_certificate_without_a_ca_publishes_the_leaf(tmp_path: Path) -> None:
    own = operator_files(tmp_path, "pki")
    config = ServerConfig(data_dir=tmp_path / "data", tls_cert=own.cert_file, tls_key=own.key_file)
    served = tls.prepare_server_tls(config)
    assert served is not None
    assert served.ca_fingerprint == tls.pem_fingerprint(own.cert_file.read_bytes())
    assert served.ca_pem == own.cert_file.read_bytes()


def test_operator_key_that_does_not_match_is_refused(tmp_path: Path) -> None:
    one, two = operator_files(tmp_path, "one"), operator_files(tmp_path, "two")
    config = ServerConfig(data_dir=tmp_path / "d", tls_cert=one.cert_file, tls_key=two.key_file)
    with pytest.raises(ValidationError, match="is not the key of the certificate") as refused:
        tls.prepare_server_tls(config)
    assert refused.value.field == "tls_key"


def test_operator_ca_that_did_not_issue_the_certificate_is_refused(tmp_path: Path) -> None:
    one, _ = operator_files(tmp_path, "one"), operator_files(tmp_path, "two")
    config = ServerConfig(
        data_dir=tmp_path / "d",
        tls_cert=one.cert_file,
        tls_key=one.key_file,
        tls_ca=tmp_path / "two" / "ca.crt",
    )
    with pytest.raises(ValidationError, match="was not issued by --tls-ca"):
        tls.prepare_server_tls(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls_cert": "missing.pem", "tls_key": "missing.key"}, "cannot read --tls-cert"),
        ({"tls_cert": "garbage", "tls_key": "server.key"}, "holds no PEM certificate"),
        ({"tls_cert": "server.crt", "tls_key": "garbage"}, "is not a PEM private key"),
        ({"tls_cert": "server.crt"}, "--tls-key is missing"),
        ({"tls_key": "server.key"}, "--tls-cert is missing"),
        ({"tls_ca": "ca.crt"}, "--tls-ca needs --tls-cert"),
        ({"tls": "off", "tls_cert": "server.crt", "tls_key": "server.key"}, "drop --tls off"),
        ({"tls": "sometimes"}, "auto, on or off"),
        ({"tls_san": ("bad name!",)}, "DNS name or an IP"),
        (
            {"tls_cert": "server.crt", "tls_key": "server.key", "tls_san": ("x.example",)},
            "--tls-san applies to the generated",
        ),
        (
            {"tls_cert": "server.crt", "tls_key": "server.key", "tls_ca": "two.crt"},
            "exactly one certificate",
        ),
    ],
)
def test_unusable_settings_name_the_flag(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    own = operator_files(tmp_path, "pki")
    pki = tmp_path / "pki"
    (pki / "garbage").write_text("not pem\n")
    (pki / "two.crt").write_bytes(own.ca_pem + own.cert_file.read_bytes())
    values: dict[str, object] = {"data_dir": tmp_path / "d", "host": "0.0.0.0"}
    for key, value in overrides.items():
        values[key] = pki / str(value) if key in ("tls_cert", "tls_key", "tls_ca") else value
    with pytest.raises(ValidationError, match=message):
        tls.prepare_server_tls(ServerConfig(**values))  # type: ignore[arg-type]


def test_encrypted_operator_key_is_refused(tmp_path: Path) -> None:
    own = operator_files(tmp_path, "pki")
    key = serialization.load_pem_private_key(own.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    config = ServerConfig(data_dir=tmp_path / "d", tls_cert=own.cert_file, tls_key=encrypted)
    with pytest.raises(ValidationError, match="is encrypted"):
        tls.prepare_server_tls(config)


def test_subject_names() -> None:
    wanted = {str(n.value) for n in tls.subject_names("[2001:db8::1]", ["Corral.Example."])}
    assert {"localhost", "127.0.0.1", "::1", "2001:db8::1", "corral.example"} <= wanted
    assert "0.0.0.0" not in {str(n.value) for n in tls.subject_names("0.0.0.0")}
    assert tls.parse_subject_name("*.corral.example") == x509.DNSName("*.corral.example")
    assert tls.parse_subject_name("10.0.0.1") == x509.IPAddress(ipaddress.ip_address("10.0.0.1"))


async def test_ca_route_and_activation_fingerprint(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data", host="0.0.0.0")
    served = tls.prepare_server_tls(config)
    assert served is not None
    app = create_app(config, served)
    async with app.router.lifespan_context(app):
        token = config.admin_token_path.read_text().strip()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://corral.test") as client:
            public = await client.get("/ca.pem")
            assert public.status_code == 200
            assert public.content == served.ca_pem
            assert public.headers["content-type"] == "application/x-pem-file"
            created = await client.post(
                "/api/v1/activations", json={}, headers={"Authorization": f"Bearer {token}"}
            )
            assert created.status_code == 201, created.text
            assert created.json()["ca_fingerprint"] == served.ca_fingerprint


async def test_ca_route_without_tls_is_not_found(api: Api) -> None:
    response = await api.client.get("/ca.pem", headers={"Authorization": ""})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "NotFoundError"
    assert "does not serve TLS" in response.json()["error"]["message"]
    created = await api.client.post("/api/v1/activations", json={})
    assert created.json()["ca_fingerprint"] is None
