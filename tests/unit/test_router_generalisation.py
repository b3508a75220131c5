"""The shipped router on prompts unlike its training files: does it send the kinds of prompt that need a
strong model (multi-step math, logic, code) to it more readily than open-ended writing?

The held-out MT-bench file (never opened here) mixes writing, role-play, humanities, math, reasoning and
coding questions; RouteLLM's routers earn most of their MT-bench score by telling those apart. These
prompts were written for this test (none is from MT-bench or any outcome file); each category's mean
predicted gain of gpt-4-1106-preview over Mixtral must order the two groups. A router that ignores the
prompt (or only reads its length: the open-ended prompts have 17-24 words, the others 11-35) fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from tiergate.routing.router import Router

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"

OPEN_ENDED = {
    "writing": [
        ("Write a short, warm blog post about the joys of gardening in spring, with a catchy title and an "
        "encouraging ending for first-time gardeners."),
        ("Compose a heartfelt thank-you letter to a high-school teacher who inspired you to study music, "
        "mentioning one specific lesson."),
        ("Draft a friendly product description for a minimalist leather wallet sold online, aimed at young "
        "professionals who travel often."),
        "Write a funny limerick about a curious cat who learns to code at night while its owner is asleep.",
    ],
    "role-play": [
        ("Pretend you are a pirate captain and describe your ship, its crew and its strange traditions to a "
        "nervous new recruit."),
        ("Act as a friendly barista in a small seaside cafe and recommend a warm drink for a rainy, lazy "
        "Sunday afternoon."),
        ("You are a cheerful tour guide in ancient Rome. Welcome the visitors and tell them what they will "
        "see today."),
        ("Play the role of a calm, patient detective interviewing a nervous witness about a missing "
        "painting at a museum."),
    ],
    "humanities": [
        ("Discuss the social, economic and political causes of the French Revolution in three short "
        "paragraphs for a general reader."),
        ("What are the main ideas of Stoic philosophy, and how might someone apply them in everyday modern "
        "working life?"),
        ("Explain the significance of the printing press for European literacy, religion and the spread of "
        "new ideas."),
        ("Compare impressionism and expressionism in painting: their aims, their typical subjects and two "
        "well-known artists of each."),
    ],
}
NEEDS_STRONG = {
    "math": [
        ("A train travels 240 km in 3 hours and then 180 km in 2 hours. What is its average speed for the "
        "whole trip? Then find how long 500 km would take at that speed."),
        "Find all real x such that x^3 - 6x^2 + 11x - 6 = 0, and compute the sum of the squares of the roots.",
        "The sum of three consecutive odd integers is 87. Find the product of the smallest and largest.",
        ("In how many ways can 8 people be seated around a round table if two particular people must not "
        "sit together?"),
    ],
    "reasoning": [
        "If all bloops are razzies and some razzies are lazzies, must some bloops be lazzies? Explain step by step.",
        ("Alice is taller than Bob. Carol is shorter than Bob but taller than Dave. Eve is taller than Alice. "
        "Who is the second shortest?"),
        ("A farmer must cross a river with a wolf, a goat and a cabbage; the boat holds one item. Give a plan "
        "and justify each step."),
        ("Three boxes are labelled apples, oranges, mixed, and all labels are wrong. You may draw one fruit "
        "from one box. How do you relabel them?"),
    ],
    "coding": [
        ("Write a Python function that returns the longest palindromic substring of a string in O(n^2) time, "
        "with tests."),
        "Implement an LRU cache in C++ with O(1) get and put.",
        "Write a SQL query that returns the second highest salary per department.",
        "Given a binary tree, write code to serialize and deserialize it; explain the complexity.",
    ],
}


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load()


def _mean_gain(router: Router, prompts: list[str]) -> float:
    gains = []
    for p in prompts:
        strong, weak = router.assess(p, [STRONG, WEAK])
        assert strong.quality_source == weak.quality_source == "learned"
        gains.append(strong.predicted_quality - weak.predicted_quality)
    return float(np.mean(gains))


def test_strong_model_gain_is_larger_for_math_logic_and_code_than_for_open_ended_writing(router: Router) -> None:
    open_ended = {c: _mean_gain(router, ps) for c, ps in OPEN_ENDED.items()}
    needs_strong = {c: _mean_gain(router, ps) for c, ps in NEEDS_STRONG.items()}
    assert min(needs_strong.values()) > max(open_ended.values()), (needs_strong, open_ended)


def test_routing_between_the_pair_follows_the_gain(router: Router) -> None:
    """At a quality target between the groups, math goes to the strong model more often than writing."""
    def strong_share(prompts: list[str], target: float) -> float:
        picks = [router.decide(p, [STRONG, WEAK], quality_target=target).chosen.candidate for p in prompts]
        return sum(c == STRONG for c in picks) / len(picks)

    open_prompts = [p for ps in OPEN_ENDED.values() for p in ps]
    strong_prompts = [p for ps in NEEDS_STRONG.values() for p in ps]
    shares = [(strong_share(strong_prompts, t), strong_share(open_prompts, t)) for t in (0.85, 0.9, 0.95)]
    assert all(s >= o for s, o in shares), shares
    assert any(s > o for s, o in shares), shares
