"""Typed keys for what the aiohttp application shares with its handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from relay.daemon import Daemon

RELAY: web.AppKey[Daemon] = web.AppKey("relay")
