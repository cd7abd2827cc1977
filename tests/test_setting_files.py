"""Every setting also reads ``APIARY_<NAME>_FILE``: secrets from a file (a compose or
Kubernetes secret), never from a command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiary.core.errors import ConfigError
from apiary.core.settings import AdminClientSettings, NodeSettings, read_variable_files

TOKEN = "a-token-from-a-file-0123"


def test_a_setting_is_read_from_the_file_its_file_variable_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    monkeypatch.setenv("APIARY_ADMIN_TOKEN_FILE", str(secret))
    assert NodeSettings.load().admin_token == TOKEN
    assert AdminClientSettings.load().admin_token == TOKEN
    assert NodeSettings.load(admin_token="from-the-flag-0123456").admin_token \
        == "from-the-flag-0123456", "a flag still wins"


def test_a_file_value_is_validated_like_any_other(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    port = tmp_path / "port"
    port.write_text("not-a-port")
    monkeypatch.setenv("APIARY_API_PORT_FILE", str(port))
    with pytest.raises(ConfigError, match="invalid setting api_port"):
        NodeSettings.load()


def test_a_missing_file_and_a_setting_given_twice_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIARY_ADMIN_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"cannot read APIARY_ADMIN_TOKEN_FILE=.*absent"):
        NodeSettings.load()
    (tmp_path / "present").write_text(TOKEN)
    monkeypatch.setenv("APIARY_ADMIN_TOKEN_FILE", str(tmp_path / "present"))
    monkeypatch.setenv("APIARY_ADMIN_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match="both APIARY_ADMIN_TOKEN and "
                                          "APIARY_ADMIN_TOKEN_FILE are set"):
        NodeSettings.load()


def test_file_variables_are_known_and_only_for_real_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key").write_text("0x" + "11" * 32)
    environ = {"APIARY_PRIVATE_KEY_FILE": str(tmp_path / "key")}
    assert read_variable_files(NodeSettings, environ) == {"private_key": "0x" + "11" * 32}
    assert read_variable_files(AdminClientSettings, environ) == {}
    monkeypatch.setenv("APIARY_ADMN_TOKEN_FILE", str(tmp_path / "key"))
    with pytest.raises(ConfigError, match=r"APIARY_ADMN_TOKEN_FILE \(did you mean "
                                          "APIARY_ADMIN_TOKEN_FILE"):
        NodeSettings.load()
