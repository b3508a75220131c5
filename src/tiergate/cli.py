"""The `tiergate` command: `serve`, and the subcommands that feature modules add (`route`,
`router train|eval`, `keys`, `spend`, `batch`). Each feature module exposes `add_*_commands(sub)`;
this file only wires them, so `tiergate --help` stays fast (heavy imports happen inside commands)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    from tiergate.config import ConfigError, load_config

    if not 0 <= args.port <= 65535:  # uvicorn bound another port (99999 -> 34463) or failed after the banner
        print(f"tiergate: --port must be 1-65535 (or 0 for a free port the banner names), got {args.port}",
              file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        from tiergate.server.gateway import resolve_catalog

        _, unpriced = resolve_catalog(config, config.load_catalog())
    except ConfigError as e:
        print(f"tiergate: configuration error: {e}", file=sys.stderr)
        return 2

    _setup_logging(args.log_level)
    _startup_banner(config, args)
    if unpriced:
        print(f"tiergate: not in the catalogue, served UNPRICED (cost 0): {', '.join(unpriced)} "
              "(add `catalog: <entry>` to price them)", file=sys.stderr)
    return _run_server(config, args)


def _setup_logging(level: str) -> logging.Logger:
    """JSON lines on stderr, scrubbed, for tiergate, uvicorn and every other library (asyncpg, aiohttp,
    redis, asyncio: at warning or above), a repeating traceback held back (logs.RepeatFilter)."""
    from tiergate.logs import capture_other_loggers, configure_logging

    logger = configure_logging(level)
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own lines in the same JSON format
        uv = logging.getLogger(name)
        uv.handlers = list(logger.handlers)
        uv.setLevel(logger.level)
        uv.propagate = False
    capture_other_loggers(level)
    return logger


def _run_server(config, args: argparse.Namespace) -> int:
    """Start the backends (storage, Redis, …) first, in the server's own event loop: a backend that
    cannot be used ends start-up with one line (`tiergate: storage error: …`) and exit status 1, no
    traceback; `listening on …` is printed only once the backends are up and the port is bound."""
    import asyncio

    import uvicorn
    import uvloop

    from tiergate.server.app import build_app
    from tiergate.server.gateway import Gateway, StartupError

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"tiergate: storage {_redacted(config.storage)}; listening on "
                      f"http://{_host_text(args.host)}:{self.bound_port() or args.port}/v1", file=sys.stderr, flush=True)

        def bound_port(self) -> int | None:
            """The port the server listens on (the one the system chose for --port 0)."""
            for server in getattr(self, "servers", ()):
                for sock in server.sockets or ():
                    return int(sock.getsockname()[1])
            return None

    async def main() -> int:
        try:
            sockets = _bind(args.host, args.port)
        except OSError as e:
            print(f"tiergate: {e}", file=sys.stderr)
            return 1
        try:
            gateway = await Gateway.start(config)
        except StartupError as e:
            for sock in sockets:
                sock.close()
            print(f"tiergate: {e}", file=sys.stderr)
            return 1
        server = Server(uvicorn.Config(
            build_app(config, gateway=gateway),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            http="httptools",
            lifespan="on",
            timeout_keep_alive=30,
            log_config=None,
        ))
        serving["on"] = True
        try:
            await server.serve(sockets=sockets)
        finally:
            await gateway.close()  # done by the lifespan's shutdown already, unless start-up failed before it
        return 0 if server.started else 3

    # uvicorn handles Ctrl-C while it serves (a graceful stop; a second one forces it) and re-raises the
    # signal when it is done: that must not cancel the gateway's own close (asyncio.Runner's handler would,
    # then end in a KeyboardInterrupt traceback). Before serving, Ctrl-C stops start-up as usual.
    serving = {"on": False}

    def on_sigint(signum: int, frame: Any) -> None:
        if not serving["on"]:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    except KeyboardInterrupt:
        print("tiergate: interrupted before the server started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)


class BindError(OSError):
    """The address to listen on cannot be bound; the message is the one line `serve` prints."""


def _bind(host: str, port: int) -> list:
    """The sockets `serve` listens on, bound here before the backends start, as asyncio's create_server
    would bind them (every address of `host`, SO_REUSEADDR, IPv6 sockets v6-only): a port in use or a
    host this machine cannot bind is one line (`BindError`), not uvicorn's JSON log line after the
    banner. With port 0 every address gets the port the first one was given."""
    import errno
    import socket

    where = f"{_host_text(host)}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise BindError(f"cannot listen on {where}: unknown host {host!r} ({getattr(e, 'strerror', None) or e}): "
                        "check --host") from None
    reasons = {
        errno.EADDRINUSE: "the port is in use (another process listens on it): stop it or pass another --port",
        errno.EADDRNOTAVAIL: "this machine has no such address: check --host (127.0.0.1, 0.0.0.0 or one of its "
                             "own addresses)",
        errno.EACCES: "permission denied (ports below 1024 need privileges): pass a --port of 1024 or more",
    }
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys((i[0], i[1], i[2], "", i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            try:
                sock.bind(addr)
            except OSError as e:
                reason = reasons.get(e.errno or 0, e.strerror or str(e))
                raise BindError(f"cannot listen on {where}: {reason}") from None
            sock.set_inheritable(True)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


EMBEDDED = "<embedded defaults>"  # GatewayConfig.source when no --config was given


def _startup_banner(config, args) -> None:
    providers = sorted({d.provider for m in config.models for d in m.deployments})
    print(f"tiergate: config {config.source}; {len(config.models)} models "
          f"({', '.join(m.name for m in config.models)}); providers: {', '.join(providers)}", file=sys.stderr)
    if "sim" in providers:
        if config.source == EMBEDDED:  # the defaults serve the simulator when OPENAI_API_KEY is unset
            hint = "set OPENAI_API_KEY or use --config to serve real models"
        else:
            hint = "models served by it: " + ", ".join(
                m.name for m in config.models if any(d.provider == "sim" for d in m.deployments))
        print(f"tiergate: the `sim` provider is a SIMULATOR: its answers are synthetic ({hint})", file=sys.stderr)


def _host_text(host: str) -> str:
    """The host as written in the "listening on" URL (`--host ""` listens on every address: 0.0.0.0)."""
    if not host:
        return "0.0.0.0"
    return f"[{host}]" if ":" in host else host


def _redacted(url: str) -> str:
    """A storage (or Redis) URL fit to print (`logs.redact_url`)."""
    from tiergate.logs import redact_url

    return redact_url(url)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tiergate", description="OpenAI-compatible LLM gateway with a learned router.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", "-c", default=os.environ.get("TIERGATE_CONFIG"),
                   help="YAML config file (default: embedded defaults: sim models, SQLite)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=4000, help="1-65535, or 0 for a free port (default: 4000)")
    s.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="JSON log lines on stderr; `info` adds one line per request (default: warning)")
    s.set_defaults(func=_serve)
    for mod, fn in (
        ("tiergate.cli_router", "add_router_commands"),
        ("tiergate.cli_admin", "add_admin_commands"),
        ("tiergate.cli_batch", "add_batch_commands"),
    ):
        with contextlib.suppress(ImportError):
            module = __import__(mod, fromlist=[fn])
            getattr(module, fn)(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away (`| head`) surfaces here
    except BrokenPipeError:
        # the reader closed the pipe (`tiergate keys list | head`): stop quietly, as a command killed by
        # SIGPIPE would; point stdout at /dev/null so the interpreter's final flush cannot raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return rc


if __name__ == "__main__":
    sys.exit(main())
