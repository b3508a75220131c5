"""The start-up warning of a gateway without a master key says that its admin API is off (since it
answers 403 admin_api_disabled); it only said that /v1 was open."""

from __future__ import annotations

import logging

from tiergate.config import parse_config
from tiergate.server.gateway import Gateway


async def test_the_open_warning_says_the_admin_api_is_off(tmp_path, records):
    raw = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
    gw = await Gateway.start(parse_config(raw, env={}))
    await gw.close()
    (warning,) = [m for level, m in records if level == logging.WARNING and "no master key" in m]
    assert warning == ("no master key (TIERGATE_MASTER_KEY): the gateway is open, /v1 needs no API key and no budgets "
                       "or rate limits apply; the /admin API (tiergate keys|spend --url) is off until a master key is "
                       "set (tiergate keys|spend --storage URL work on the database directly)")
