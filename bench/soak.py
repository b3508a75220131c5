"""Soak: bounded steady load through the real gateway (`tiergate serve` in a subprocess) against a
flapping upstream, checking that nothing is lost and nothing leaks.

Two loopback fake OpenAI upstreams (tests/fakes/openai_upstream.py) run in this process: `flap`
cycles every `--flap-s` seconds through healthy and faulty phases (500, 429 + Retry-After, hang,
connection reset, cut stream, stall, malformed JSON, 503 for every 3rd request ...), `good` is always
healthy. Model `pair` has both deployments (every request should succeed), model `solo` only `flap`
(requests during a faulty phase must get an OpenAI-shaped error). Half the requests stream.

An open-loop client sends `--rps` requests per second for `--duration` seconds and classifies every
one: `ok` (a complete answer: 200 with choices, or a stream ending in [DONE]), `error` (an OpenAI-shaped
error body with its status), `stream_error` (a stream that ended with an OpenAI error event) or `lost`
(anything else: connection dropped, client timeout, a stream that just stops, a malformed body).
It samples the gateway's RSS every second and scans its stderr for tracebacks.

Pass criteria (exit status 1 otherwise): zero lost, zero unhandled exceptions, RSS growth < 10% from the
end of warm-up (the first `--warmup-frac` of the run) to the end.

    python bench/soak.py                    # 180 s at 40 req/s
    python bench/soak.py --duration 30      # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakes.openai_upstream import FakeOpenAI

# (fault kind, params, for every n-th request): the flapping upstream's phases, healthy in between
PHASES: list[tuple[str, dict[str, Any], int] | None] = [
    None,
    ("500", {}, 1),
    None,
    ("429", {"retry_after": 1}, 1),
    ("hang", {"seconds": 30}, 2),
    None,
    ("reset", {}, 1),
    ("cut", {"after": 3}, 2),  # after the first token: streams end with an error event
    ("stall", {"after": 1, "seconds": 30}, 2),
    None,
    ("malformed", {"after": 1}, 1),
    ("503", {}, 3),
]
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|Exception in ASGI application|"
                       r"exception was never retrieved|Unhandled exception")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def spawn_gateway(raw_config: dict[str, Any], tmp: str, env: dict[str, str] | None = None):
    """Run `tiergate serve` on a free port with `raw_config`; yield (base_url, Popen, stderr path)."""
    cfg_path = Path(tmp) / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(raw_config))
    port = free_port()
    err_path = Path(tmp) / "gateway.stderr"
    errf = open(err_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tiergate.cli import main; sys.exit(main())", "serve",
         "--config", str(cfg_path), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=errf, env={**os.environ, **(env or {})}, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {err_path.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/metrics", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("gateway did not start within 60 s")
            time.sleep(0.2)
        yield url + "/v1", proc, err_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errf.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def config(flap: FakeOpenAI, good: FakeOpenAI, db: str) -> dict[str, Any]:
    common = {"catalog": "gpt-4o-mini",
              "timeouts": {"connect": 1, "first_token": 1.0, "stream_idle": 1.0, "total": 5},
              "retry": {"max_retries": 2, "backoff_base_s": 0.05, "backoff_max_s": 0.5, "max_retry_after_s": 1.5},
              "circuit": {"failures": 5, "window_s": 10, "cooldown_s": 2}}
    dep = {"provider": "openai_compatible", "model": "gpt-4o-mini"}
    return {"storage": f"sqlite:///{db}", "models": [
        {"name": "pair", **common, "strategy": "least_inflight", "deployments": [
            {**dep, "id": "pair-flap", "api_base": flap.url}, {**dep, "id": "pair-good", "api_base": good.url}]},
        {"name": "solo", **common, "deployments": [{**dep, "id": "solo-flap", "api_base": flap.url}]},
    ]}


async def one(client: httpx.AsyncClient, model: str, stream: bool) -> tuple[str, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "soak test request"}], "stream": stream}
    t = time.perf_counter()
    try:
        if not stream:
            r = await client.post("/chat/completions", json=body)
            data = orjson.loads(r.content)
            if r.status_code == 200 and data.get("choices"):
                return "ok", time.perf_counter() - t
            err = data.get("error") if isinstance(data, dict) else None
            if r.status_code >= 400 and isinstance(err, dict) and err.get("message") and err.get("type"):
                return f"error_{r.status_code}", time.perf_counter() - t
            return "lost", time.perf_counter() - t
        async with client.stream("POST", "/chat/completions", json=body) as r:
            if r.status_code != 200:
                data = orjson.loads(await r.aread())
                err = data.get("error") if isinstance(data, dict) else None
                ok = isinstance(err, dict) and err.get("message") and err.get("type")
                return (f"error_{r.status_code}" if ok else "lost"), time.perf_counter() - t
            last = None
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    last = line[6:]
                    if last == "[DONE]":
                        return "ok", time.perf_counter() - t
                    if last.startswith('{"error"'):
                        return "stream_error", time.perf_counter() - t
            return "lost", time.perf_counter() - t
    except (httpx.HTTPError, orjson.JSONDecodeError, ValueError):
        return "lost", time.perf_counter() - t


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def drive(url: str, pid: int, flap: FakeOpenAI, args: argparse.Namespace) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    lat: dict[str, list[float]] = {"pair": [], "solo": []}
    rss: list[tuple[float, int]] = []
    tasks: set[asyncio.Task] = set()
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=15, limits=limits) as client:
        start = time.perf_counter()
        phase_i = -1
        n = 0

        async def run(model: str, stream: bool) -> None:
            kind, dt = await one(client, model, stream)
            outcomes[f"{model}:{kind}"] += 1
            lat[model].append(dt)

        next_rss = 0.0
        while (now := time.perf_counter() - start) < args.duration:
            p = int(now // args.flap_s) % len(PHASES)
            if p != phase_i:
                phase_i = p
                flap.clear_faults()
                if PHASES[p] is not None:
                    kind, params, every = PHASES[p]
                    flap.fail_every(kind, every, **params)
                flap.requests.clear()  # the fake records every request; keep the bench's own memory flat
            if now >= next_rss:
                rss.append((now, rss_kib(pid)))
                next_rss = now + 1.0
            model = "solo" if n % 4 == 3 else "pair"
            t = asyncio.create_task(run(model, n % 2 == 0))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, n / args.rps - (time.perf_counter() - start)))
        flap.clear_faults()
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        rss.append((time.perf_counter() - start, rss_kib(pid)))
    return {"sent": n, "outcomes": outcomes, "lat": lat, "rss": rss, "unfinished": len(tasks)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=180.0)
    ap.add_argument("--rps", type=float, default=40.0)
    ap.add_argument("--flap-s", type=float, default=4.0, help="seconds per upstream phase")
    ap.add_argument("--warmup-frac", type=float, default=0.25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as flap, FakeOpenAI() as good:
        with spawn_gateway(config(flap, good, str(Path(tmp) / "soak.db")), tmp) as (url, proc, err_path):
            res = asyncio.run(drive(url, proc.pid, flap, args))
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        stderr = err_path.read_text(errors="replace")
    tracebacks = len(TRACEBACK.findall(stderr))
    o = res["outcomes"]
    done = sum(o.values())
    lost = sum(v for k, v in o.items() if k.endswith(":lost")) + res["unfinished"] + (res["sent"] - done)
    rss = res["rss"]
    warm_t = args.duration * args.warmup_frac
    warm = next((r for t, r in rss if t >= warm_t), rss[0][1])
    end = rss[-1][1]
    growth = (end - warm) / warm * 100 if warm else float("nan")
    retries = sum(float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines() if x.startswith("tiergate_retries_total{"))
    print(f"soak: {args.duration:.0f} s at {args.rps:.0f} req/s, upstream phase every {args.flap_s:g} s "
          f"({len(PHASES)} phases), half streaming")
    print(f"{'outcome':<28}{'count':>8}")
    for k in sorted(o):
        print(f"{k:<28}{o[k]:>8}")
    print(f"{'sent / finished':<28}{res['sent']:>8} / {done}")
    print(f"{'lost':<28}{lost:>8}")
    print(f"{'unhandled exceptions':<28}{tracebacks:>8}")
    print(f"{'gateway retries (metrics)':<28}{retries:>8.0f}")
    for m in ("pair", "solo"):
        print(f"{'latency ' + m + ' p50 / p99 (ms)':<28}{pct(res['lat'][m], .5) * 1000:>8.1f} / "
              f"{pct(res['lat'][m], .99) * 1000:.1f}")
    print(f"{'RSS start / warm / end (MiB)':<28}{rss[0][1] / 1024:>8.1f} / {warm / 1024:.1f} / {end / 1024:.1f}")
    print(f"{'RSS growth after warm-up':<28}{growth:>7.1f}%")
    ok = lost == 0 and tracebacks == 0 and growth < 10
    if tracebacks:
        print("--- gateway stderr (tail) ---")
        print(stderr[-3000:])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
