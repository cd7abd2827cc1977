"""Logs: a level switch, text or one JSON object per line, and the node, round and peer of
each line as fields of their own."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from apiary.core.errors import ConfigError
from apiary.core.logs import configure_logging, in_round
from apiary.core.settings import CoordinatorSettings, NodeSettings

log = logging.getLogger("apiary.node.test")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_node_round_and_peer_as_fields(stream: io.StringIO) -> None:
    configure_logging("info", "json", node="basel", stream=stream)
    with in_round(7):
        log.info("node=%s round=%d fetched blocks", "basel", 7,
                 extra={"peer": "bern:50051", "peer_address": "0x" + "ab" * 20})
    log.info("resumed")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["message"] == "node=basel round=7 fetched blocks"
    assert first["level"] == "INFO" and first["logger"] == "apiary.node.test"
    assert first["time"].startswith("20") and "T" in first["time"]
    assert (first["node"], first["round"]) == ("basel", 7)
    assert (first["peer"], first["peer_address"]) == ("bern:50051", "0x" + "ab" * 20)
    assert second["node"] == "basel"
    assert "round" not in second and "peer" not in second, "outside a round, no round field"


def test_an_unknown_peer_is_no_field(stream: io.StringIO) -> None:
    configure_logging("info", "json", node="basel", stream=stream)
    log.warning("refused a push from a plaintext peer", extra={"peer_address": None})
    assert "peer_address" not in json.loads(lines(stream)[0])


def test_the_round_belongs_to_the_block_and_the_thread(stream: io.StringIO) -> None:
    configure_logging("info", "json", node="basel", stream=stream)
    with in_round(3):
        with in_round(4):
            log.info("inner")
        log.info("outer")
    log.info("after")
    rounds = [json.loads(line).get("round") for line in lines(stream)]
    assert rounds == [4, 3, None]


def test_text_lines_read_as_before_with_the_missing_context_added(stream: io.StringIO) -> None:
    configure_logging("info", "text", node="basel", stream=stream)
    with in_round(2):
        log.info("node=%s round=%d done", "basel", 2, extra={"peer": "bern:50051"})
        log.info("admin call GET /v1/status")
    done, audit = lines(stream)
    assert done.endswith(" INFO apiary.node.test: node=basel round=2 done peer=bern:50051")
    assert audit.endswith(" INFO apiary.node.test: node=basel round=2 admin call GET /v1/status")


def test_the_level_switch(stream: io.StringIO) -> None:
    configure_logging("warning", "text", stream=stream)
    log.info("quiet")
    log.warning("loud")
    assert [line.split(": ", 1)[1] for line in lines(stream)] == ["loud"]
    configure_logging("debug", "text", stream=stream)
    log.debug("detail")
    assert lines(stream)[-1].endswith("detail")


def test_a_bad_level_or_format_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="log_level='loud'"):
        NodeSettings.load(log_level="loud")
    monkeypatch.setenv("APIARY_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="APIARY_LOG_FORMAT"):
        CoordinatorSettings.load()
    monkeypatch.setenv("APIARY_LOG_FORMAT", "json")
    assert CoordinatorSettings.load().log_format == "json"
    assert NodeSettings.load().log_level == "info"
