"""Fault matrix benchmark: success rate and added latency per upstream fault, through the real
gateway (`tiergate serve` subprocess) with two loopback fake upstreams, for chat completions (plain and
streaming) and native Responses API streams (`POST /v1/responses`, `stream: true`: the upstream's events
relayed, failover until the first answer-bearing event). The faults, timeouts and config are those of
tests/e2e/test_faults.py (a Responses stream that fails before its first answer-bearing event must fail
over invisibly, like a chat stream before its first token).

For each fault x mode:
- `healthy 2nd`: `--n` requests to a model whose first-choice deployment has the fault queued for each
  request and whose second deployment is healthy (circuit threshold raised so every request meets the
  fault). Reported: success rate (a complete, correct answer), p50/p99 latency and the p99 added over
  the same requests with no fault.
- `no healthy`: `--n-solo` requests to a model whose only deployment always has the fault. Reported:
  the share that got the expected OpenAI-shaped error (status and type), and p99 time to that error
  (bounded by the configured total timeout of 4 s).

    python bench/fault_matrix.py [--n 40] [--n-solo 8] [--concurrency 4] [--modes plain,stream,responses-stream]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from soak import pct, spawn_gateway

from tests.e2e.test_faults import EXPECTED, FAULTS, TIMEOUTS, gateway_config, slug
from tests.fakes.openai_upstream import FakeOpenAI

ANSWER = "echo: hello there"


MODES = ("plain", "stream", "responses-stream")


def chat_line(line: str) -> tuple[str, bool, str | None]:
    """One SSE line of a chat completion stream -> (answer text in it, end of stream?, error type)."""
    if line == "data: [DONE]":
        return "", True, None
    if not line.startswith("data: {"):
        return "", False, None
    c = orjson.loads(line[6:])
    if "error" in c:
        return "", False, c["error"].get("type") or "error"
    return "".join(ch["delta"].get("content") or "" for ch in c.get("choices") or ()), False, None


def responses_line(line: str) -> tuple[str, bool, str | None]:
    """One SSE line of a Responses stream -> (answer text in it, `response.completed`?, error type)."""
    if not line.startswith("data: {"):
        return "", False, None
    e = orjson.loads(line[6:])
    kind = e.get("type")
    if kind == "response.output_text.delta":
        return e["delta"], False, None
    if kind in ("error", "response.failed"):
        err = e.get("error") or (e.get("response") or {}).get("error") or {}
        return "", False, err.get("type") or err.get("code") or kind
    return "", kind == "response.completed", None


async def streamed(client: httpx.AsyncClient, path: str, body: dict, read, t: float) -> tuple[bool, int, str | None, float]:
    """One streaming request: correct if its pieces spell the answer and the stream's end marker came."""
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            d = orjson.loads(await r.aread())
            return False, r.status_code, (d.get("error") or {}).get("type"), time.perf_counter() - t
        text, done = [], False
        async for line in r.aiter_lines():
            piece, end, err = read(line)
            if err is not None:
                return False, 200, err, time.perf_counter() - t
            text.append(piece)
            done |= end
        return done and "".join(text) == ANSWER, 200, None, time.perf_counter() - t


async def request(client: httpx.AsyncClient, model: str, mode: str) -> tuple[bool, int, str | None, float]:
    """(correct answer?, HTTP status, error type, seconds)."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hello there"}], "stream": mode != "plain"}
    t = time.perf_counter()
    try:
        if mode == "responses-stream":
            return await streamed(client, "/responses", {"model": model, "input": "hello there", "stream": True},
                                  responses_line, t)
        if mode == "stream":
            return await streamed(client, "/chat/completions", chat, chat_line, t)
        r = await client.post("/chat/completions", json=chat)
        d = orjson.loads(r.content)
        if r.status_code == 200:
            return d["choices"][0]["message"]["content"] == ANSWER, 200, None, time.perf_counter() - t
        return False, r.status_code, (d.get("error") or {}).get("type"), time.perf_counter() - t
    except (httpx.HTTPError, orjson.JSONDecodeError, KeyError, IndexError) as e:
        return False, 0, type(e).__name__, time.perf_counter() - t


async def batch(client, model, mode, n, conc, before=None) -> list[tuple[bool, int, str | None, float]]:
    out = []
    for i in range(0, n, conc):
        k = min(conc, n - i)
        if before is not None:
            before(k)
        out.extend(await asyncio.gather(*[request(client, model, mode) for _ in range(k)]))
    return out


async def run(url: str, bad: FakeOpenAI, args) -> list[dict]:
    rows = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for mode in args.modes:
            dep = "plain" if mode == "plain" else "stream"  # the config's models per fault: plain / stream
            # baseline: the same model and path, no fault
            await batch(client, f"dual-500-{dep}", mode, 8, args.concurrency)  # warm up connections
            base = await batch(client, f"dual-500-{dep}", mode, args.n, args.concurrency)
            base_p99 = pct([r[3] for r in base], 0.99)
            rows.append({"fault": "none (baseline)", "mode": mode, "ok": sum(r[0] for r in base) / len(base),
                         "p50": pct([r[3] for r in base], .5), "p99": base_p99, "added": 0.0, "hits": 0,
                         "solo_ok": None, "solo_p99": None})
            for fault, (kind, params) in FAULTS.items():
                bad.clear()
                res = await batch(client, f"dual-{slug(fault)}-{dep}", mode, args.n, args.concurrency,
                                  before=lambda k, kind=kind, params=params: bad.fail_next(kind, k, **params))
                hits = len(bad.requests)
                bad.clear()
                bad.fail_every(kind, 1, **params)
                solo = await batch(client, f"solo-{slug(fault)}-{dep}", mode, args.n_solo, args.concurrency)
                bad.clear()
                want = EXPECTED[fault]
                p99 = pct([r[3] for r in res], 0.99)
                rows.append({"fault": fault, "mode": mode, "ok": sum(r[0] for r in res) / len(res),
                             "p50": pct([r[3] for r in res], .5), "p99": p99, "added": p99 - base_p99,
                             "hits": hits,
                             "solo_ok": sum((r[1], r[2]) == want for r in solo) / len(solo),
                             "solo_p99": pct([r[3] for r in solo], 0.99), "want": want})
                print(f"  measured {fault} / {mode}", file=sys.stderr)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--n-solo", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, of {', '.join(MODES)} (default: all)")
    args = ap.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := sorted(set(args.modes) - set(MODES)):
        ap.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as bad, FakeOpenAI() as good:
        cfg = gateway_config(bad, good, str(Path(tmp) / "fm.db"),
                             circuit={"failures": 100000, "window_s": 1, "cooldown_s": 0.1})
        with spawn_gateway(cfg, tmp) as (url, _proc, _err):
            rows = asyncio.run(run(url, bad, args))
    print(f"fault matrix: {args.n} requests per cell (concurrency {args.concurrency}), timeouts {TIMEOUTS}")
    print("| fault | mode | healthy 2nd: success | p50 ms | p99 ms | added p99 ms | fault hits | "
          "no healthy: expected error | error | p99 time to error ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    good_all = True
    for r in rows:
        solo = "" if r["solo_ok"] is None else f"{r['solo_ok'] * 100:.0f}%"
        want = "" if "want" not in r else f"{r['want'][0]} {r['want'][1]}"
        sp99 = "" if r["solo_p99"] is None else f"{r['solo_p99'] * 1000:.0f}"
        print(f"| {r['fault']} | {r['mode']} | {r['ok'] * 100:.0f}% | {r['p50'] * 1000:.1f} | {r['p99'] * 1000:.1f} "
              f"| {r['added'] * 1000:+.1f} | {r['hits']} | {solo} | {want} | {sp99} |")
        good_all &= r["ok"] == 1.0 and (r["solo_ok"] in (None, 1.0))
        if r["solo_p99"] is not None:
            good_all &= r["solo_p99"] < TIMEOUTS["total"] + 0.5
    print("PASS" if good_all else "FAIL")
    return 0 if good_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
