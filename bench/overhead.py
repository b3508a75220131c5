"""Gateway overhead benchmark: the same load straight to a loopback upstream, through tiergate and
through the LiteLLM proxy, in one run.

For every target (direct, tiergate, litellm), mode (non-streaming, streaming) and concurrency it
runs `wrk` (C, epoll, one thread: cheap enough not to be the bottleneck on 2 cores) for a warm-up
and then a bounded measured window, and reports requests/s, p50/p99 latency (for streams: time to
the end of the stream) and the gateway's CPU time per request, read from /proc/<pid>/stat (utime +
stime of the gateway process and all its descendants) before and after the measured window. At
concurrency 1 a small Python client also measures time to first byte of the stream body (TTFB).

    bash bench/litellm_setup.sh            # once: LiteLLM in bench/.litellm-venv
    python bench/overhead.py               # all targets, c = 1,16,64, both modes, 5 s per cell

Needs `wrk` on PATH (Debian: apt-get install -y wrk). See bench/README.md for the options and
docs/benchmarks.md for recorded results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httptools
import orjson

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
MODEL = "gpt-4o-mini"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "tiergate", "litellm")

_WRK_LUA = r"""
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_AUTH")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


# `tiergate serve` runs one process. For --workers N > 1 the same app runs under uvicorn's own
# multi-process mode with the settings `tiergate serve` uses (uvloop, httptools, no access log).
_FACTORY = (
    '"""Written by bench/overhead.py: the tiergate app for uvicorn --factory (several workers)."""\n'
    "import os\n\nfrom tiergate.config import load_config\nfrom tiergate.server.app import build_app\n\n\n"
    "def app():\n    return build_app(load_config(os.environ['TIERGATE_CONFIG']))\n"
)
_MULTI_WORKER = (
    "{python} -m uvicorn --factory --app-dir {appdir} tiergate_bench_app:app --host {host} --port {port} "
    "--workers {workers} --loop uvloop --http httptools --no-access-log --log-level warning "
    "--timeout-keep-alive 30"
)


def request_body(stream: bool) -> bytes:
    """A small, realistic chat request (~30 prompt tokens). Same bytes for every target."""
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "In one sentence, what does an LLM gateway do for a team?"},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def taskset(cpus: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


# ---------------------------------------------------------------- processes and CPU accounting


def tree_pids(root: int) -> list[int]:
    """`root` and all its live descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(root: int) -> float:
    """utime + stime (+ reaped children's) of `root` and its live descendants, in seconds."""
    ticks = 0
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


@dataclass
class Server:
    """A started target process (its own session, so the whole tree can be stopped)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None
    log: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)


def spawn(name: str, cmd: list[str], port: int, workdir: Path, env: dict[str, str]) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
    return Server(name, port, proc, log)


# ---------------------------------------------------------------- a tiny HTTP/1.1 client (probe + checks)


@dataclass
class Reply:
    status: int
    body: bytes
    ttfb_s: float  # request sent -> first body bytes
    total_s: float  # request sent -> message complete


class Conn:
    """One keep-alive connection; requests in sequence. httptools parses the responses."""

    def __init__(self, port: int, auth: str) -> None:
        self.port, self.auth = port, auth
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> Reply:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        state: dict[str, object] = {"done": False, "first": None, "parts": []}
        parts: list[bytes] = []

        class Handler:
            def on_body(self, b: bytes) -> None:
                if state["first"] is None:
                    state["first"] = time.perf_counter()
                parts.append(b)

            def on_message_complete(self) -> None:
                state["done"] = True

        parser = httptools.HttpResponseParser(Handler())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {self.auth}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        t0 = time.perf_counter()
        self.writer.write(head + body)
        while not state["done"]:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("connection closed before the response was complete")
            parser.feed_data(data)
        t1 = time.perf_counter()
        first = state["first"] if isinstance(state["first"], float) else t1
        return Reply(parser.get_status_code(), b"".join(parts), first - t0, t1 - t0)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def check_reply(reply: Reply, stream: bool) -> str | None:
    """None when the reply is a well-formed chat completion (or stream), else what is wrong."""
    if reply.status != 200:
        return f"HTTP {reply.status}: {reply.body[:300]!r}"
    if stream:
        if not reply.body.rstrip().endswith(b"data: [DONE]"):
            return f"stream does not end with [DONE]: ...{reply.body[-200:]!r}"
        if b'"content"' not in reply.body:
            return "stream carries no content deltas"
        return None
    try:
        content = orjson.loads(reply.body)["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return f"not a chat completion: {reply.body[:300]!r}"
    return None if content else "empty content"


async def wait_ready(server: Server, auth: str, timeout_s: float) -> None:
    """Until a real chat request through the target succeeds (both modes)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}; see {server.log}")
        conn = Conn(server.port, auth)
        try:
            problems = []
            for stream in (False, True):
                reply = await conn.post("/v1/chat/completions", request_body(stream))
                problem = check_reply(reply, stream)
                if problem:
                    problems.append(problem)
            if not problems:
                return
            last = "; ".join(problems)
        except OSError as exc:
            last = str(exc)
        finally:
            await conn.close()
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f}s: {last}")


async def probe(port: int, auth: str, stream: bool, seconds: float) -> tuple[float, float, int]:
    """Sequential requests for `seconds`: (p50 TTFB ms, p50 total ms, bad replies)."""
    conn = Conn(port, auth)
    body = request_body(stream)
    ttfb: list[float] = []
    total: list[float] = []
    bad = 0
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            reply = await conn.post("/v1/chat/completions", body)
            if check_reply(reply, stream):
                bad += 1
            ttfb.append(reply.ttfb_s)
            total.append(reply.total_s)
    finally:
        await conn.close()
    ttfb.sort()
    total.sort()
    return ttfb[len(ttfb) // 2] * 1e3, total[len(total) // 2] * 1e3, bad


# ---------------------------------------------------------------- one measured cell


@dataclass
class Cell:
    target: str
    mode: str  # "json" | "stream"
    concurrency: int
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    gw_cpu_ms_per_req: float | None = None
    upstream_cpu_ms_per_req: float = 0.0
    client_cpu_pct: float = 0.0
    ttfb_p50_ms: float | None = None
    extra: dict[str, object] = field(default_factory=dict)


def run_wrk(url: str, concurrency: int, seconds: int, env: dict[str, str], cpus: str) -> tuple[dict, float]:
    """Run wrk; (its BENCH_RESULT dict, its CPU seconds)."""
    cmd = taskset(cpus, [
        "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s",
        "-s", env["BENCH_LUA"], url,
    ])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        cmd, check=False, env={**os.environ, **env}, capture_output=True, text=True, timeout=seconds + 90
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.split(" ", 1)[1]), cpu
    raise RuntimeError(f"wrk gave no result (rc={out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")


def measure(
    server: Server, upstream: Server, mode: str, concurrency: int, args: argparse.Namespace,
    files: dict[str, Path], auth: str,
) -> Cell:
    stream = mode == "stream"
    env = {"BENCH_BODY_FILE": str(files[mode]), "BENCH_AUTH": auth, "BENCH_LUA": str(files["lua"])}
    url = f"http://{HOST}:{server.port}/v1/chat/completions"
    if args.warmup > 0:
        run_wrk(url, concurrency, args.warmup, env, args.client_cpus)
    gw0 = cpu_seconds(server.pid) if server.pid and server is not upstream else None
    up0 = cpu_seconds(upstream.pid) if upstream.pid else 0.0
    res, client_cpu = run_wrk(url, concurrency, args.duration, env, args.client_cpus)
    gw1 = cpu_seconds(server.pid) if gw0 is not None and server.pid else None
    up1 = cpu_seconds(upstream.pid) if upstream.pid else 0.0
    n = max(res["requests"], 1)
    secs = res["duration_us"] / 1e6
    cell = Cell(
        target=server.name, mode=mode, concurrency=concurrency, requests=res["requests"],
        rps=res["requests"] / secs, p50_ms=res["p50_us"] / 1e3, p99_ms=res["p99_us"] / 1e3,
        errors=res["connect"] + res["read"] + res["write"] + res["status"] + res["timeout"],
        gw_cpu_ms_per_req=(gw1 - gw0) * 1e3 / n if gw0 is not None and gw1 is not None else None,
        upstream_cpu_ms_per_req=(up1 - up0) * 1e3 / n,
        client_cpu_pct=100.0 * client_cpu / secs,
        extra={"p90_ms": res["p90_us"] / 1e3, "mean_ms": res["mean_us"] / 1e3, "max_ms": res["max_us"] / 1e3},
    )
    if concurrency == 1 and args.probe > 0:
        ttfb, total, bad = asyncio.run(probe(server.port, auth, stream, args.probe))
        cell.ttfb_p50_ms = ttfb
        cell.extra["probe_total_p50_ms"] = total
        cell.errors += bad
    return cell


# ---------------------------------------------------------------- targets


def start_target(
    name: str, upstream_port: int, args: argparse.Namespace, workdir: Path, auth: str
) -> Server:
    port = free_port()
    upstream_base = f"http://{HOST}:{upstream_port}/v1"
    if name == "litellm":
        exe = Path(args.litellm_venv) / "bin" / "litellm"
        if not exe.exists():
            raise RuntimeError(f"{exe} not found: run `bash bench/litellm_setup.sh` first")
        cmd = [str(exe), "--config", str(HERE / "litellm_config.yaml"), "--host", HOST, "--port", str(port),
               "--num_workers", str(args.workers)]
        env = {"BENCH_UPSTREAM_API_BASE": upstream_base, "LITELLM_MASTER_KEY": auth, "LITELLM_LOG": "ERROR"}
        return spawn(name, taskset(args.gateway_cpus, cmd), port, workdir, env)
    if name == "tiergate":
        config = workdir / "tiergate.yaml"
        config.write_text(
            "models:\n"
            f"  - name: {MODEL}\n"
            "    deployments:\n"
            "      - provider: openai_compatible\n"
            f"        api_base: {upstream_base}\n"
            "        api_key: env:BENCH_UPSTREAM_KEY\n"
            f"storage: sqlite:///{workdir / 'tiergate.db'}\n"
        )
        template = args.tiergate_cmd or (
            "tiergate serve --config {config} --host {host} --port {port}" if args.workers == 1 else _MULTI_WORKER
        )
        if "{appdir}" in template:
            (workdir / "tiergate_bench_app.py").write_text(_FACTORY)
        cmd = shlex.split(template.format(config=config, host=HOST, port=port, workers=args.workers,
                                          upstream=upstream_base, appdir=workdir, python=sys.executable))
        if cmd[0] == "tiergate" and shutil.which("tiergate") is None:
            cmd = [sys.executable, "-m", "tiergate.cli", *cmd[1:]]
        env = {"BENCH_UPSTREAM_KEY": "sk-upstream-bench", "TIERGATE_CONFIG": str(config)}
        return spawn(name, taskset(args.gateway_cpus, cmd), port, workdir, env)
    raise ValueError(name)


# ---------------------------------------------------------------- report


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(cells: list[Cell]) -> str:
    direct = {(c.mode, c.concurrency): c for c in cells if c.target == "direct"}
    rows = [
        (
            "| target | mode | conc | req/s | p50 ms | p99 ms | +p50 vs direct ms | gateway CPU ms/req "
            "| TTFB p50 ms (c=1) | errors |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        d = direct.get((c.mode, c.concurrency))
        added = None if d is None or c.target == "direct" else c.p50_ms - d.p50_ms
        rows.append(
            f"| {c.target} | {c.mode} | {c.concurrency} | {c.rps:,.0f} | {c.p50_ms:.2f} | {c.p99_ms:.2f} | "
            f"{fmt(added, '+.2f')} | {fmt(c.gw_cpu_ms_per_req, '.3f')} | {fmt(c.ttfb_p50_ms, '.2f')} "
            f"| {c.errors} |"
        )
    return "\n".join(rows)


def verdict(cells: list[Cell]) -> str:
    by = {(c.target, c.mode, c.concurrency): c for c in cells}
    lines = []
    for mode in ("json", "stream"):
        tg1, d1 = by.get(("tiergate", mode, 1)), by.get(("direct", mode, 1))
        if tg1 and d1:
            added = tg1.p50_ms - d1.p50_ms
            lines.append(f"{mode}: c=1 added p50 {added:+.2f} ms (target <= 1 ms): {'PASS' if added <= 1 else 'FAIL'}")
        tg64, ll64 = by.get(("tiergate", mode, 64)), by.get(("litellm", mode, 64))
        if tg64 and ll64 and ll64.rps > 0:
            ratio = tg64.rps / ll64.rps
            lines.append(f"{mode}: c=64 tiergate/litellm req/s = {ratio:.1f}x (target >= 10x): "
                         f"{'PASS' if ratio >= 10 else 'FAIL'}")
        cpus = [c.gw_cpu_ms_per_req for c in cells
                if c.target == "tiergate" and c.mode == mode and c.gw_cpu_ms_per_req is not None]
        if cpus:
            worst = max(cpus)
            lines.append(f"{mode}: tiergate CPU/request worst cell {worst:.3f} ms (target <= 0.5 ms): "
                         f"{'PASS' if worst <= 0.5 else 'FAIL'}")
    return "\n".join(lines)


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs ({model}), Linux {os.uname().release}, Python {sys.version.split()[0]}"


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Gateway overhead: direct vs tiergate vs LiteLLM proxy.")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma list of direct,tiergate,litellm")
    p.add_argument("--concurrency", default="1,16,64", help="comma list")
    p.add_argument("--modes", default="json,stream", help="comma list of json,stream")
    p.add_argument("--duration", type=int, default=5, help="measured seconds per cell (whole seconds: wrk)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per cell, not measured (0: none)")
    p.add_argument("--probe", type=float, default=1.5, help="seconds of the c=1 TTFB probe (0: off)")
    p.add_argument("--workers", type=int, default=1, help="gateway worker processes (LiteLLM and tiergate)")
    p.add_argument("--chunks", type=int, default=32, help="content chunks per upstream stream")
    p.add_argument("--upstream-ttft-ms", type=float, default=0.0,
                   help="upstream pause between a stream's first event and the rest (shows relaying)")
    p.add_argument("--gateway-cpus", default="", help="taskset CPU list for gateways, e.g. 1")
    p.add_argument("--client-cpus", default="", help="taskset CPU list for wrk and the upstream, e.g. 0")
    p.add_argument("--tiergate-cmd", default="",
                   help="command template; {config} {host} {port} {workers} {upstream} {python} {appdir} are filled in")
    p.add_argument("--litellm-venv", default=str(HERE / ".litellm-venv"))
    p.add_argument("--ready-timeout", type=float, default=120.0)
    p.add_argument("--json-out", default="", help="also write the cells as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    targets = [t for t in args.targets.split(",") if t]
    modes = [m for m in args.modes.split(",") if m]
    concs = [int(c) for c in args.concurrency.split(",") if c]
    auth = "sk-bench-" + secrets.token_hex(16)
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="tiergate-bench-") as tmp:
        workdir = Path(tmp)
        files = {"lua": workdir / "post.lua", "json": workdir / "json.body", "stream": workdir / "stream.body"}
        files["lua"].write_text(_WRK_LUA)
        files["json"].write_bytes(request_body(False))
        files["stream"].write_bytes(request_body(True))
        up_port = free_port()
        upstream = spawn(
            "upstream",
            taskset(args.client_cpus, [sys.executable, str(HERE / "upstream.py"), "--host", HOST,
                                       "--port", str(up_port), "--chunks", str(args.chunks),
                                       "--ttft-ms", str(args.upstream_ttft_ms)]),
            up_port, workdir, {},
        )
        servers = [upstream]
        try:
            asyncio.run(wait_ready(upstream, auth, 20))
            for name in targets:
                server = upstream if name == "direct" else start_target(name, up_port, args, workdir, auth)
                if server is not upstream:
                    servers.append(server)
                    t0 = time.monotonic()
                    asyncio.run(wait_ready(server, auth, args.ready_timeout))
                    print(f"# {name} ready in {time.monotonic() - t0:.1f}s (pid {server.pid})", flush=True)
                direct_view = Server("direct", up_port, None) if name == "direct" else server
                for mode in modes:
                    for conc in concs:
                        cell = measure(direct_view, upstream, mode, conc, args, files, auth)
                        cells.append(cell)
                        print(f"# {cell.target:8} {mode:6} c={conc:<3} {cell.rps:9,.0f} req/s  "
                              f"p50 {cell.p50_ms:8.2f} ms  p99 {cell.p99_ms:8.2f} ms  "
                              f"gw cpu {fmt(cell.gw_cpu_ms_per_req, '.3f')} ms/req  "
                              f"upstream cpu {cell.upstream_cpu_ms_per_req:.3f} ms/req  "
                              f"wrk cpu {cell.client_cpu_pct:.0f}%  errors {cell.errors}", flush=True)
                if server is not upstream:
                    server.stop()
        finally:
            for s in reversed(servers):
                s.stop()
    print()
    print(f"machine: {machine()}")
    print(f"settings: duration {args.duration:g}s + warm-up {args.warmup:g}s per cell, workers={args.workers}, "
          f"gateway cpus={args.gateway_cpus or 'any'}, client cpus={args.client_cpus or 'any'}, "
          f"stream chunks={args.chunks}, upstream ttft={args.upstream_ttft_ms:g} ms")
    print(table(cells))
    print()
    print(verdict(cells))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(
            {"machine": machine(), "args": vars(args), "cells": [asdict(c) for c in cells]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
