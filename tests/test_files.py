"""Atomic writes: private files are 0600 from the first byte; a failed write changes nothing."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiary.core import files
from apiary.core.he import HEContext
from apiary.node.identity import ensure_identity
from apiary.node.keys import KeyRing


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def replaced(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Target name → mode its temporary file had when it was renamed into place."""
    seen: dict[str, int] = {}
    real = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen[Path(dst).name] = mode(Path(src))
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", spy)
    return seen


def test_private_files_are_0600_before_they_replace_the_target(
    tmp_path: Path, umask_022: None, replaced: dict[str, int]
) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"old")
    target.chmod(0o644)
    files.write_private(target, b"secret")
    files.write_private_json(tmp_path / "identity.json", {"key": "0x01"})
    assert replaced == {"key": 0o600, "identity.json": 0o600}
    assert mode(target) == 0o600 and target.read_bytes() == b"secret"
    assert json.loads((tmp_path / "identity.json").read_text()) == {"key": "0x01"}


def test_the_temporary_file_is_created_0600_before_any_byte(tmp_path: Path,
                                                            umask_022: None) -> None:
    with files.replacing(tmp_path / "key", private=True) as fh:
        temporary = [p for p in tmp_path.iterdir() if p.name != "key"]
        assert len(temporary) == 1 and mode(temporary[0]) == 0o600
        assert temporary[0].stat().st_size == 0
        fh.write(b"secret")


def test_reports_are_readable_by_others(tmp_path: Path, umask_022: None) -> None:
    path = files.write_json(tmp_path / "report.json", {"a": 1}, indent=2)
    assert mode(path) == 0o644
    assert path.read_text() == '{\n  "a": 1\n}\n'


def test_an_interrupted_write_leaves_the_old_file(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    files.write_json(target, {"round": 1})

    def crash(_fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        files.write_json(target, {"round": 2})
    monkeypatch.undo()
    with pytest.raises(RuntimeError), files.replacing(target) as fh:
        fh.write(b"half a fi")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_members_secrets_are_never_readable_by_others(
    tmp_path: Path, umask_022: None, replaced: dict[str, int], he: HEContext
) -> None:
    state = tmp_path / "alpha"
    ensure_identity(state, "alpha", "127.0.0.1:50051")
    KeyRing(state).put(0, he.secret_bytes(), he.public_digest())
    KeyRing(state).put(1, he.secret_bytes(), he.public_digest())
    secrets = {"identity.json", "he-secret.ctx", "node.key", "epoch-1.ctx"}
    assert {name: replaced[name] for name in secrets} == dict.fromkeys(secrets, 0o600)
    written = {p.name: mode(p) for p in state.rglob("*") if p.is_file()}
    assert {n: m for n, m in written.items() if n in secrets} == dict.fromkeys(secrets, 0o600)
    assert written["node.pem"] == 0o644
    assert json.loads((state / "identity.json").read_text())["name"] == "alpha"
