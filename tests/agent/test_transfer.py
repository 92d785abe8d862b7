"""The agent's part of a transfer before any byte moves: URLs and resolving paths on the node."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.agent.transfer import _resolve, transfer_url
from corral.protocol.messages import TransferStart
from corral.protocol.transfer import TransferError


def test_transfer_urls_follow_the_server_url() -> None:
    assert transfer_url("https://corral.example:8443/base/", "xfr-1") == (
        "wss://corral.example:8443/base/agent/v1/transfers/xfr-1",
        "/base/agent/v1/transfers/xfr-1",
    )
    assert (
        transfer_url("http://127.0.0.1:9", "xfr-2")[0]
        == "ws://127.0.0.1:9/agent/v1/transfers/xfr-2"
    )


def test_uploads_resolve_the_real_destination(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    start = TransferStart("xfr-1", "upload", str(tmp_path / "link"), False, "file", "f.txt")
    # An existing directory (here through a link) receives the file under its own name,
    # and READY names the real path, which the server checks against policy.
    assert _resolve(start) == (str(tmp_path / "real" / "f.txt"), "file", None)
    tree = TransferStart("xfr-2", "upload", str(tmp_path / "new"), True, "directory", "src")
    assert _resolve(tree) == (str(tmp_path / "new"), "directory", None)
    missing = TransferStart("xfr-3", "upload", str(tmp_path / "no" / "f"), False, "file", "f")
    with pytest.raises(TransferError) as refused:
        _resolve(missing)
    assert refused.value.code == "not_found"


def test_downloads_resolve_and_scan_the_source(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("x")
    root, kind, tree = _resolve(TransferStart("xfr-1", "download", str(tmp_path / "d"), True))
    assert (root, kind) == (str(tmp_path / "d"), "directory")
    assert tree is not None
    assert [e.path for e in tree.entries] == ["", "sub", "sub/f"]
    with pytest.raises(TransferError) as refused:
        _resolve(TransferStart("xfr-2", "download", str(tmp_path / "d"), False))
    assert (refused.value.code, "--recursive" in refused.value.message) == ("invalid", True)


@pytest.mark.parametrize(
    ("path", "direction", "code"),
    [("/tmp//x", "download", "protocol"), ("/tmp/x", "sideways", "protocol")],
)
def test_what_the_server_should_never_send_is_refused(path: str, direction: str, code: str) -> None:
    with pytest.raises(TransferError) as refused:
        _resolve(TransferStart("xfr-1", direction, path))
    assert refused.value.code == code
