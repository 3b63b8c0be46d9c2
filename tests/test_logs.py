"""Logs: one line per event, text or JSON, with the callback token and secrets masked."""

from __future__ import annotations

import json
import logging

from relay import logs


def test_json_lines_mask_the_callback_route_and_secrets(capsys):
    logs.setup("json", "info", secrets=["topsecret-api-key"])
    log = logging.getLogger("relay.test")
    log.info("POST /octopush/abcdefTOKEN123 200")
    log.info("calling with key %s", "topsecret-api-key")
    logs.flush()
    lines = capsys.readouterr().err.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["message"] == "POST /octopush/*** 200" and records[0]["level"] == "info"
    assert "topsecret-api-key" not in lines[1] and "***" in records[1]["message"]


def test_text_format_is_one_line(capsys):
    logs.setup("text", "warning")
    logging.getLogger("relay.test").info("hidden at warning level")
    logging.getLogger("relay.test").warning("shown /octopush/secret-token")
    logs.flush()
    err = capsys.readouterr().err
    assert "hidden" not in err and err.count("\n") == 1 and "secret-token" not in err
