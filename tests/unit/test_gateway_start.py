"""Start-up warnings about serving (an open gateway) come from `Gateway.start`, not from
`Accounting.start`, which read-only users of the store (`tiergate spend --storage`) also run."""

from __future__ import annotations

import logging

import pytest

from tiergate.accounting.service import Accounting
from tiergate.config import parse_config
from tiergate.server.gateway import Gateway

OPEN_WARNING = "no master key (TIERGATE_MASTER_KEY): the gateway is open"


def _config(tmp_path, master: str | None):
    raw = {"models": [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}],
           "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
    return parse_config(raw, env={"TIERGATE_MASTER_KEY": master} if master else {})


@pytest.mark.parametrize("master", [None, "sk-start-master-0123456789"])
async def test_gateway_start_warns_when_open(tmp_path, records, master):
    gw = await Gateway.start(_config(tmp_path, master))
    await gw.close()
    warned = [m for lvl, m in records if lvl == logging.WARNING and OPEN_WARNING in m]
    assert len(warned) == (1 if master is None else 0)


async def test_accounting_start_says_nothing_about_serving(tmp_path, records):
    acc = await Accounting.start(_config(tmp_path, None), journal_dir=tmp_path / "j")
    await acc.close()
    assert acc.is_open and [m for lvl, m in records if lvl >= logging.WARNING] == []
