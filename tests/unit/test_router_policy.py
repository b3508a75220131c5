"""Routing policy: cheapest within target, best under a cost cap, eligibility, named targets."""

from __future__ import annotations

import numpy as np
import pytest

from tiergate.routing.data import Outcome, OutcomeRow
from tiergate.routing.policy import (
    POLICY_TARGETS,
    PolicyError,
    choose,
    choose_batch,
    resolve_target,
    two_model_score,
)
from tiergate.routing.profiles import Profiles
from tiergate.routing.quality import FitConfig, QualityModel
from tiergate.routing.router import Candidate, NoEligibleCandidate, Router

NAMES = ["o1@high", "o3-mini@low", "gpt-4o-mini"]
Q = [0.90, 0.87, 0.60]
C = [0.60, 0.01, 0.0005]


def test_cheapest_within_target() -> None:
    ch = choose(NAMES, Q, C, target=0.95)
    assert NAMES[ch.index] == "o3-mini@low"  # 0.87 >= 0.95 * 0.90
    assert "o1@high" in ch.reason and "95%" in ch.reason
    assert NAMES[choose(NAMES, Q, C, target=0.99).index] == "o1@high"
    assert NAMES[choose(NAMES, Q, C, target=0.5).index] == "gpt-4o-mini"


def test_best_under_cost_cap() -> None:
    assert NAMES[choose(NAMES, Q, C, target=None, cost_cap=0.05).index] == "o3-mini@low"
    assert NAMES[choose(NAMES, Q, C, target=None, cost_cap=1.0).index] == "o1@high"
    ch = choose(NAMES, Q, C, target=None, cost_cap=0.0001)  # nothing fits: cheapest, said so
    assert NAMES[ch.index] == "gpt-4o-mini" and "no candidate under the cost cap" in ch.reason
    # target applies among the candidates under the cap
    assert NAMES[choose(NAMES, Q, C, target=0.5, cost_cap=0.05).index] == "gpt-4o-mini"


def test_unpriced_candidates_sort_last_and_ties() -> None:
    ch = choose(["a", "b"], [0.8, 0.8], [float("nan"), 0.2], target=0.95)
    assert ch.index == 1
    ch = choose(["a", "b"], [0.8, 0.9], [0.1, 0.1], target=0.5)  # same cost: higher quality
    assert ch.index == 1


def test_choose_batch_agrees_with_choose() -> None:
    rng = np.random.default_rng(1)
    q, c = rng.uniform(0.2, 1, (50, 4)), rng.uniform(0.001, 1, (50, 4))
    for t in (0.8, 0.95, 1.0):
        batch = choose_batch(q, c, t)
        single = [choose(list("abcd"), q[i], c[i], target=t).index for i in range(50)]
        assert batch.tolist() == single


def test_named_targets() -> None:
    assert resolve_target("auto:quality", None) == POLICY_TARGETS["quality"]
    assert resolve_target("balanced", None) == POLICY_TARGETS["balanced"]
    assert resolve_target("auto", None) == POLICY_TARGETS["balanced"]
    assert POLICY_TARGETS["cost"] < POLICY_TARGETS["balanced"] < POLICY_TARGETS["quality"] <= 1.0
    assert resolve_target("auto:cost", 0.9) == 0.9
    with pytest.raises(PolicyError, match="auto:balanced"):
        resolve_target("auto:fast", None)
    with pytest.raises(PolicyError):
        resolve_target(None, 1.5)


def test_two_model_score_orders_by_gain() -> None:
    s = two_model_score(np.array([0.9, 0.9, 0.2]), np.array([0.9, 0.3, 0.1]))
    assert s.argmax() == 1


def _router() -> Router:
    rows = [
        OutcomeRow(f"s-{i}", "s", f"Question {i}: what is {i} times {i + 1}?", {},
                   {"big": Outcome(1.0), "small": Outcome(1.0 if i % 3 else 0.0)})
        for i in range(40)
    ]
    return Router(QualityModel(config=FitConfig(steps=40, rank=2)).fit(rows), Profiles.load(), catalog=None)


def test_decide_respects_eligibility_and_explains() -> None:
    router = _router()
    d = router.decide("What is 3 times 4?", ["big", "small"], policy="auto:quality",
                      eligible=lambda c: "no vision" if c.model == "big" else None)
    assert d.chosen.candidate == "small"
    big = next(a for a in d.assessments if a.candidate == "big")
    assert not big.eligible and big.ineligible_reason == "no vision"
    assert d.target == POLICY_TARGETS["quality"] and d.reason
    with pytest.raises(NoEligibleCandidate, match="no vision"):
        router.decide("hi", ["big"], eligible=lambda c: "no vision")


def test_decide_accepts_messages_and_candidate_objects() -> None:
    router = _router()
    d = router.decide([{"role": "user", "content": "What is 5 times 6?"}], [Candidate("big"), "small"],
                      quality_target=1.0)
    assert d.chosen.candidate in {"big", "small"}
    assert len(d.assessments) == 2 and d.as_dict()["chosen"] == d.chosen.candidate
