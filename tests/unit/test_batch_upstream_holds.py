"""A forwarded batch's budget holds outlive the reservation TTL: an upstream batch may run for hours, a
reservation lapses after 11 minutes, so the driver renews each hold every half TTL (same amount), and
settling a renewed hold adds the line's cost and frees the hold."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from tiergate.accounting.budget import BudgetRefused, InProcessBudget, Reservation
from tiergate.batches.upstream import _renew_holds

TTL = 0.4


async def _zero(_key_id: str, _since: float) -> float:
    return 0.0


def _env():
    budget = InProcessBudget(_zero, reservation_ttl_s=TTL)
    key = SimpleNamespace(id="key_1", name="k", budget_usd=1.0, budget_period="none", is_master=False,
                          revoked_at=None)

    async def get(_key_id):
        return key

    async def update_upstream(_bid, _up):
        return None

    gw = SimpleNamespace(accounting=SimpleNamespace(budget=budget, keys=SimpleNamespace(get=get)))
    return budget, key, gw, SimpleNamespace(update_upstream=update_upstream)


async def test_holds_are_renewed_before_they_lapse():
    budget, key, gw, store = _env()
    res = await budget.reserve(key, 0.3)
    up = {"holds": {"0": [res.period, res.id, res.amount_nusd, 100]}, "held_at": time.time()}
    cur = {"id": "batch_x", "key_id": key.id}
    await _renew_holds(gw, store, cur, up)  # too early: nothing to do
    assert up["holds"]["0"][1] == res.id
    await asyncio.sleep(TTL * 0.6)
    await _renew_holds(gw, store, cur, up)
    period, rid, amount, est = up["holds"]["0"]
    assert rid == res.id and amount == res.amount_nusd and est == 100  # extended in place (Budget.renew)
    await asyncio.sleep(TTL * 0.6)  # the first reservation would have lapsed by now
    assert await budget.usage(key) == (0.0, 0.3)
    try:
        await budget.reserve(key, 0.8)
        raise AssertionError("the renewed hold must still count")
    except BudgetRefused:
        pass
    await budget.settle(Reservation(key.id, period, rid, amount), 0.1)
    assert await budget.usage(key) == (0.1, 0.0)


def test_which_rate_limit_refusals_are_worth_waiting_for():
    from tiergate.accounting.ratelimit import Decision, refusal, too_large
    from tiergate.batches.runner import never_fits, retry_after_s

    big = too_large("k", 500, 1010)
    assert never_fits(big) and retry_after_s(big) is None
    d = Decision(False, {"retry-after": "3"}, 2.4, "requests")
    busy = refusal("k", 2, None, 10, d)
    assert not never_fits(busy) and retry_after_s(busy) == 3.0
    from tiergate.wire.errors import GatewayError

    assert retry_after_s(GatewayError(429, "slow down", headers={"retry-after-ms": "250"})) == 0.25
    assert never_fits(GatewayError(429, "no", headers={"x-should-retry": "false"}))
