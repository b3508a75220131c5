"""Router decision latency and memory: p50/p99 per prompt length, embedding included, and RSS.

    python bench/router_latency.py [--router DIR] [--n 300] [--candidates A,B] [--outcomes FILE.jsonl.gz]

Times `Router.decide` (features + static embedding + quality model + token count + costs + policy) on
prompts of about 50 / 200 / 500 / 1,000 / 2,000 tokens over the candidates of the default routing
config, after a warm-up. Wall-clock p50/p99 and the mean CPU time of the process per decision (the
latter is what a decision costs when the 2 cores are shared with other work). RSS from /proc/self/status.
The last two columns time the same decisions given the prompt's token count, as the gateway calls the
router: it counts every request's prompt tokens anyway (context window, rate limits, budget) and, for
`model: auto`, counts once and shares the count with the router and the rest of the pipeline.
`--candidates` routes between other candidates (e.g. `gpt-4-1106-preview,mixtral-8x7b-instruct-v0.1`, which
the MMLU neighbourhood component covers); `--outcomes` adds a row timed on that outcome file's prompts
(e.g. MMLU's, which resemble the component's file, so it is computed for them).
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time

CANDIDATES = ["o1@high", "o1@medium", "o1@low", "o3-mini@high", "o3-mini@medium", "o3-mini@low",
              "o4-mini@medium", "gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022", "deepseek-v3"]
WORDS = ["the", "function", "returns", "a", "list", "of", "integers", "where", "each", "value", "is", "the", "sum", "of", "the", "previous", "two", "numbers", "modulo", "1000000007", "given", "constraints", "1", "<=", "n", "<=", "10^5", "and", "queries", "on", "intervals", "prove", "that", "the", "algorithm", "runs", "in", "linear", "time", "compute", "the", "probability", "of", "drawing", "3", "red", "balls"]


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def make_prompt(rng: random.Random, tokens: int) -> str:
    words = [rng.choice(WORDS) for _ in range(int(tokens * 0.75))]
    for i in range(0, len(words), 40):
        words[i] += f" {rng.randint(1, 999)}.\n"
    return " ".join(words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", default=None)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated candidates to route between")
    ap.add_argument("--outcomes", default=None, help="also time the prompts of this outcome file (.jsonl.gz)")
    args = ap.parse_args()
    candidates = args.candidates.split(",")
    base = rss_mb()
    t0 = time.perf_counter()
    from tiergate.accounting.tokens import count_text
    from tiergate.routing.router import Router

    router = Router.load(args.router)
    load_s = time.perf_counter() - t0
    rng = random.Random(0)
    print(f"router load: {load_s * 1000:.0f} ms; RSS {rss_mb():.0f} MB (interpreter before load {base:.0f} MB)")
    print(f"{'prompt tokens':>14} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'cpu ms':>8} "
          f"{'counted: p50':>13} {'p99':>6}")
    sets = [(f"{t}", [make_prompt(rng, t) for _ in range(args.n)]) for t in (50, 200, 500, 1000, 2000)]
    if args.outcomes:
        from tiergate.routing.data import load_outcomes

        rows = load_outcomes(args.outcomes)
        sets.append(("file", [r.prompt for r in rng.sample(rows, min(args.n, len(rows)))]))
    for _, prompts in sets:
        ntok = statistics.mean(count_text(p) for p in prompts[:20])
        for p in prompts[:10]:
            router.decide(p, candidates, policy="auto:balanced")
        times = []
        cpu0 = time.process_time()
        for p in prompts:
            t = time.perf_counter()
            router.decide(p, candidates, policy="auto:balanced")
            times.append((time.perf_counter() - t) * 1000)
        cpu = (time.process_time() - cpu0) * 1000 / len(prompts)
        counts = [count_text(p) for p in prompts]
        given = []
        for p, n in zip(prompts, counts, strict=True):
            t = time.perf_counter()
            router.decide(p, candidates, policy="auto:balanced", prompt_tokens=n)
            given.append((time.perf_counter() - t) * 1000)
        p50, p99 = pct(times, 0.5), pct(times, 0.99)
        print(f"{ntok:14.0f} {p50:8.2f} {p99:8.2f} {statistics.mean(times):8.2f} {cpu:8.2f} "
              f"{pct(given, 0.5):13.2f} {pct(given, 0.99):6.2f}")
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    print(f"RSS after routing: {rss_mb():.0f} MB; load average {load}")


if __name__ == "__main__":
    main()
