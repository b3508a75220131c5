"""Operations against a real gateway on a loopback port: a database or Redis outage (through a small TCP
proxy that the test stops; the shared services are never touched) is a 503 the SDK may retry and
`GET /ready` says so; an internal error is in the request log and the metrics; admin errors are
OpenAI-shaped; a jammed ledger journal does not stop a restart; `tg-` keys never reach the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.helpers import free_port, running_gateway
from tests.unit.test_store_fixtures import PG_BASE, _pg_up, _redis_up, drop_schema

MASTER = "mk-ops-judge7-0123456789"
MSG = [{"role": "user", "content": "Say hi"}]
SIM = [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}]

needs_pg = pytest.mark.skipif(not _pg_up(), reason="PostgreSQL is not reachable on 127.0.0.1:5432")
needs_redis = pytest.mark.skipif(not _redis_up(), reason="Redis is not reachable on 127.0.0.1:6379")


class Proxy:
    """A TCP proxy on a loopback port to `target_port`, in its own thread: `down()` closes the listening
    socket and every open connection (the backend is gone for the gateway), `up()` listens again."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target = free_port(), target_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.up()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cw.close()
            return
        self.writers |= {cw, uw}
        await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw))

    def up(self) -> None:
        async def start():
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self._run(start())

    def down(self) -> None:
        async def stop():
            if self.server is not None:
                self.server.close()
                self.server = None
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()
        self._run(stop())

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def journal(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERGATE_JOURNAL_DIR", str(tmp_path / "journal"))
    return tmp_path / "journal"


@pytest.fixture
def pg_proxy_url():
    """A postgresql:// URL through a Proxy (unique schema, dropped afterwards) and the proxy."""
    schema = f"tg_ops_{secrets.token_hex(5)}"
    proxy = Proxy(5432)
    yield f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={schema}", proxy
    proxy.close()
    asyncio.run(drop_schema(schema))


def _admin(root: str) -> httpx.Client:
    return httpx.Client(base_url=root + "/admin", headers={"authorization": f"Bearer {MASTER}"}, timeout=20)


def _client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=30)


def _wait(pred, timeout: float = 15.0):
    deadline = time.time() + timeout
    while True:
        got = pred()
        if got or time.time() > deadline:
            return got
        time.sleep(0.2)


@needs_pg
def test_a_database_outage_is_a_503_to_retry_and_ready_says_so(pg_proxy_url, journal):
    url, proxy = pg_proxy_url
    cfg = {"models": SIM, "storage": url}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        root = base.removesuffix("/v1")
        with _admin(root) as admin:
            key = admin.post("/keys", json={"name": "a", "budget_usd": 5}).json()["key"]
            client = _client(base, key)
            assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
            assert httpx.get(root + "/ready", timeout=10).json() == {"status": "ready", "checks": {"storage": "ok"}}

            proxy.down()
            time.sleep(1.5)  # past the key cache's TTL: the next request asks the database

            def refused():
                try:
                    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
                except openai.APIStatusError as e:
                    return e
                return None

            e = _wait(refused)
            assert isinstance(e, openai.InternalServerError) and e.status_code == 503, e  # was 500 internal_error
            assert e.code == "storage_unavailable" and e.type == "api_error"
            assert e.response.headers["retry-after"] == "5" and e.response.headers["x-should-retry"] == "true"
            assert e.response.headers["x-request-id"].startswith("req_")
            assert "database" in e.message and "postgres" not in e.message.lower()
            r = httpx.get(root + "/ready", timeout=10)
            assert r.status_code == 503 and r.json()["status"] == "unavailable" and r.json()["checks"]["storage"] != "ok"
            assert httpx.get(root + "/health", timeout=10).status_code == 200  # liveness: the process answers
            a = admin.get("/spend")
            assert a.status_code == 503 and a.json()["error"]["code"] == "storage_unavailable"
            assert a.headers["x-request-id"].startswith("req_")
            metrics = httpx.get(root + "/metrics", timeout=10).text
            assert 'tiergate_requests_total{model="-",deployment="-",status="storage_unavailable"}' in metrics

            proxy.up()
            assert _wait(lambda: httpx.get(root + "/ready", timeout=10).status_code == 200)
            assert _wait(lambda: refused() is None)
            assert admin.get("/spend").status_code == 200


@needs_redis
def test_a_redis_outage_is_a_503_to_retry_and_ready_says_so(tmp_path, journal):
    proxy = Proxy(6379)
    prefix = f"tgops:{secrets.token_hex(5)}:"
    cfg = {"models": SIM, "storage": f"sqlite:///{tmp_path / 'tg.db'}",
           "redis": f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}"}
    try:
        with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
            root = base.removesuffix("/v1")
            with _admin(root) as admin:
                key = admin.post("/keys", json={"name": "a", "rpm": 1000, "budget_usd": 5}).json()["key"]
            client = _client(base, key)
            assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
            assert httpx.get(root + "/ready", timeout=10).json()["checks"] == {"storage": "ok", "redis": "ok"}
            proxy.down()
            with pytest.raises(openai.APIStatusError) as e:
                client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
            assert e.value.status_code == 503 and e.value.code == "redis_unavailable", e.value  # was 500
            assert e.value.response.headers["x-should-retry"] == "true"
            r = httpx.get(root + "/ready", timeout=15)
            assert r.status_code == 503 and r.json()["checks"]["storage"] == "ok" and r.json()["checks"]["redis"] != "ok"
            proxy.up()
            assert _wait(lambda: httpx.get(root + "/ready", timeout=10).status_code == 200)
    finally:
        proxy.close()
        import redis

        rc = redis.Redis(port=6379)
        keys = list(rc.scan_iter(f"{prefix}*"))
        if keys:
            rc.delete(*keys)


class _Json(logging.Handler):
    """The JSON lines the gateway writes, as written (formatter and scrubber included)."""

    def __init__(self) -> None:
        from tiergate.logs import JsonFormatter

        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines():
    from tests.conftest import on_tiergate_logger

    with on_tiergate_logger(_Json()) as handler:
        yield handler.lines


def test_an_internal_error_is_in_the_request_log_and_the_metrics(tmp_path, journal, monkeypatch, log_lines):
    from tiergate.accounting import service
    from tiergate.server import chat

    async def bug(*a, **kw):
        raise RuntimeError("a bug")

    cfg = {"models": SIM, "storage": f"sqlite:///{tmp_path / 'tg.db'}"}
    with running_gateway(cfg, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        root = base.removesuffix("/v1")
        monkeypatch.setattr(chat, "run_chat", bug)
        with pytest.raises(openai.InternalServerError) as e:
            _client(base, MASTER).chat.completions.create(model="gpt-4o-mini", messages=MSG)
        rid = e.value.response.headers["x-request-id"]
        assert e.value.code == "internal_error"
        req = [json.loads(x) for x in log_lines if '"event":"request"' in x]
        assert any(r["request_id"] == rid and r["status"] == 500 for r in req), req  # no request line before
        metrics = httpx.get(root + "/metrics", timeout=10).text
        assert 'tiergate_requests_total{model="-",deployment="-",status="internal_error"} 1' in metrics

        monkeypatch.setattr(service.Accounting, "spend", bug)
        with _admin(root) as admin:
            r = admin.get("/spend")  # was FastAPI's text/plain "Internal Server Error", no request id
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "internal_error" and r.headers["x-request-id"].startswith("req_")
        metrics = httpx.get(root + "/metrics", timeout=10).text
        assert 'tiergate_requests_total{model="-",deployment="-",status="internal_error"} 2' in metrics
        assert sum(1 for x in log_lines if "unhandled error on /admin/spend" in x) == 1  # logged once


def test_a_virtual_key_sent_as_the_model_is_not_logged_or_stored(tmp_path, journal, log_lines):
    from tests.helpers import ledger_rows

    db = tmp_path / "tg.db"
    with running_gateway({"models": SIM, "storage": f"sqlite:///{db}"},
                         env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        with _admin(base.removesuffix("/v1")) as admin:
            key = admin.post("/keys", json={"name": "z"}).json()["key"]
        with pytest.raises(openai.NotFoundError):
            _client(base, key).chat.completions.create(model=key, messages=MSG)
        rows = ledger_rows(db, "status = 'rejected'", columns="requested_model, error")
    assert rows and all(key not in json.dumps(r) for r in rows)
    assert any('"event":"request"' in x for x in log_lines)
    assert not [x for x in log_lines if key in x]  # the request line had it in full
    assert any(key[:11] + "***" in x for x in log_lines)


def test_a_jammed_ledger_journal_does_not_stop_the_restart(tmp_path):
    """A journal holding rows the store refused (written before rows were coerced: a list as
    reasoning_effort) crashed the journal replay, so `tiergate serve` did not come up again."""
    jdir = tmp_path / "journal"
    jdir.mkdir()
    (jdir / "deadhost-1-abcd.lock").write_bytes(b"")
    row = ["req_jammed", time.time(), "master", "chat", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini/0", [], 0, 0, 0,
           0, 0.0, 12.5, None, "error", "503 upstream", None, False, 1, None, None]
    (jdir / "deadhost-1-abcd.00000001.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "c.yaml").write_text(f"models:\n  - name: gpt-4o-mini\n    deployments: [{{provider: sim}}]\n"
                                     f"storage: sqlite:///{tmp_path / 'tg.db'}\n")
    port = free_port()
    env = {**os.environ, "TIERGATE_MASTER_KEY": MASTER, "TIERGATE_JOURNAL_DIR": str(jdir)}
    proc = subprocess.Popen([sys.executable, "-m", "tiergate.cli", "serve", "--config", str(tmp_path / "c.yaml"),
                             "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        up = _wait(lambda: proc.poll() is not None or _get_ok(f"http://127.0.0.1:{port}/health"), 30)
        assert proc.poll() is None and up, proc.stderr.read() if proc.poll() is not None else ""
        spend = httpx.get(f"http://127.0.0.1:{port}/admin/spend?group_by=status",
                          headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        assert spend.status_code == 200 and [d["status"] for d in spend.json()["data"]] == ["error"]
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stderr.close()


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _serve(cfg_path, port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tiergate.cli", "serve", "--config", str(cfg_path), "--port",
                             str(port), "--log-level", "info"], env={**os.environ, **env}, stderr=subprocess.PIPE,
                            text=True)


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
    return err


@needs_pg
def test_serve_during_a_database_outage_writes_json_lines_and_no_password(pg_proxy_url, tmp_path):
    """The start-up line printed `?password=` in clear, and asyncpg's own records during an outage went to
    stderr as multi-line plain-text tracebacks (not JSON, not scrubbed)."""
    url, proxy = pg_proxy_url
    url = url.replace("postgres@", "postgres:userinfo-pw-1@") + "&password=query-pw-2"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models:\n  - name: gpt-4o-mini\n    deployments: [{{provider: sim}}]\nstorage: '{url}'\n")
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    proc = _serve(cfg, port, {"TIERGATE_MASTER_KEY": MASTER, "TIERGATE_JOURNAL_DIR": str(tmp_path / "j")})
    try:
        assert _wait(lambda: proc.poll() is not None or _get_ok(root + "/health"), 30) and proc.poll() is None
        with _admin(root) as admin:
            key = admin.post("/keys", json={"name": "a", "budget_usd": 5}).json()["key"]
        client = _client(root + "/v1", key)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
        proxy.down()
        time.sleep(1.5)
        codes = []
        for _ in range(4):
            with contextlib.suppress(openai.APIStatusError):
                client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
                codes.append(200)
                continue
            codes.append(503)
            time.sleep(0.5)
        assert 503 in codes
        time.sleep(2)  # asyncpg's pool tries to restore its connection floor in the background
        proxy.up()
        time.sleep(1)
    finally:
        err = _stop(proc)
    assert "query-pw-2" not in err and "userinfo-pw-1" not in err, err
    banner = next(ln for ln in err.splitlines() if "listening on" in ln)
    assert "password=***" in banner and "postgres:***@" in banner
    for ln in err.splitlines():
        if ln.strip() and not ln.startswith("tiergate: "):
            json.loads(ln)  # a plain-text traceback line (`Traceback (most recent call last):`) is not JSON


def test_a_repeating_traceback_is_written_once_per_window():
    """The batch runner (and asyncpg's pool) logged the same traceback about once a second while the database
    was down."""
    import io

    from tiergate.logs import capture_other_loggers

    out = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        capture_other_loggers("info", stream=out)
        handler = next(h for h in root.handlers if getattr(h, "_tiergate", False))
        flt = next(f for f in handler.filters if hasattr(f, "window_s"))
        lg = logging.getLogger("asyncpg.pool")
        for _ in range(5):
            try:
                raise ConnectionRefusedError(111, "Connect call failed password=hunter2")
            except OSError:
                lg.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
        lines = out.getvalue().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["logger"] == "asyncpg.pool" and "hunter2" not in lines[0]
        flt.window_s = 0.0
        try:
            raise ConnectionRefusedError(111, "Connect call failed password=hunter2")
        except OSError:
            lg.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
        last = json.loads(out.getvalue().splitlines()[-1])
        assert last["repeated"] == 4
    finally:
        for h in list(root.handlers):
            if getattr(h, "_tiergate", False):
                root.removeHandler(h)
        root.handlers[:] = before[0]
        root.setLevel(before[1])


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiergate.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


def test_an_empty_models_list_is_a_usage_error_and_limits_can_be_removed(tmp_path, journal):
    """`keys update ID --models ""` (or " , ", or an unset $VAR) set the allow-list to null, every model,
    with exit 0."""
    env = {"TIERGATE_MASTER_KEY": MASTER}
    with running_gateway({"models": SIM, "storage": f"sqlite:///{tmp_path / 'tg.db'}"}, env=env) as base:
        root = base.removesuffix("/v1")
        with _admin(root) as admin:
            kid = admin.post("/keys", json={"name": "y", "models": ["gpt-4o-mini"], "budget_usd": 3, "rpm": 60,
                                            "tpm": 9000}).json()["id"]
            for bad in ("", " , "):
                p = _cli("keys", "update", kid, "--models", bad, "--url", root, env=env)
                assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (bad, p.returncode, p.stderr)
                assert "--all-models" in p.stderr
                assert admin.get(f"/keys/{kid}").json()["models"] == ["gpt-4o-mini"]
            p = _cli("keys", "create", "z", "--models", "", "--url", root, env=env)
            assert p.returncode == 2 and len(admin.get("/keys").json()["data"]) == 1
            p = _cli("keys", "update", kid, "--all-models", "--no-budget", "--no-rpm", "--no-tpm", "--url", root,
                     env=env)
            assert p.returncode == 0, p.stderr
            got = admin.get(f"/keys/{kid}").json()
            assert (got["models"], got["budget_usd"], got["rpm"], got["tpm"]) == (None, None, None, None)
            p = _cli("keys", "update", kid, "--models", "gpt-4o-mini", "--all-models", "--url", root, env=env)
            assert p.returncode == 2  # one or the other
    assert "(default: all" not in _cli("keys", "update", "--help").stdout


@needs_pg
def test_read_only_commands_do_not_create_a_missing_postgresql_schema():
    import asyncpg

    schema = f"tg_ops_typo_{secrets.token_hex(4)}"

    async def exists() -> bool:
        conn = await asyncpg.connect(PG_BASE)
        try:
            return bool(await conn.fetchval("SELECT 1 FROM information_schema.schemata WHERE schema_name = $1",
                                            schema))
        finally:
            await conn.close()

    try:
        for cmd in (("keys", "list"), ("spend",), ("keys", "revoke", "key_0")):
            p = _cli(*cmd, "--storage", f"{PG_BASE}?schema={schema}")
            assert p.returncode == 2, (cmd, p.returncode, p.stdout, p.stderr)  # was 0 and an empty table
            assert len(p.stderr.strip().splitlines()) == 1 and schema in p.stderr and "does not exist" in p.stderr
            assert not asyncio.run(exists())
        p = _cli("keys", "create", "first", "--storage", f"{PG_BASE}?schema={schema}")
        assert p.returncode == 0, p.stderr  # create may make it, as `serve` does
        assert _cli("keys", "list", "--storage", f"{PG_BASE}?schema={schema}").returncode == 0
    finally:
        asyncio.run(drop_schema(schema))


def test_storage_json_output_is_the_admin_apis(tmp_path, journal):
    """The docstring promised the same output over HTTP and with --storage; --storage lacked `object` and
    `usage`."""
    db = tmp_path / "tg.db"
    storage = f"sqlite:///{db}"
    p = _cli("keys", "create", "s", "--budget-usd", "2", "--storage", storage, "--json")
    assert p.returncode == 0, p.stderr
    created = json.loads(p.stdout)
    assert created["object"] == "api_key" and created["usage"]["remaining_usd"] == 2.0
    env = {"TIERGATE_MASTER_KEY": MASTER}
    with running_gateway({"models": SIM, "storage": storage}, env=env) as base:
        root = base.removesuffix("/v1")
        for cmd in (("keys", "list"), ("spend",), ("keys", "update", created["id"], "--rpm", "5")):
            over_http = json.loads(_cli(*cmd, "--json", "--url", root, env=env).stdout)
            direct = json.loads(_cli(*cmd, "--json", "--storage", storage).stdout)
            for out in (over_http, direct):
                for k in ("start", "end"):
                    out.pop(k, None)
            assert direct == over_http, cmd


def test_a_malformed_responses_reasoning_is_a_400_naming_it(tmp_path, journal):
    """`/v1/responses` with `"reasoning": [1]` or `[]` was a 500 (`.get` on a list)."""
    cases = [([1], "reasoning", "invalid_type"), ([], "reasoning", "invalid_type"), ("high", "reasoning", "invalid_type"),
             ({"effort": []}, "reasoning.effort", "invalid_type"), ({"effort": "hgih"}, "reasoning.effort", "invalid_value"),
             ({"summary": 3}, "reasoning.summary", "invalid_type"), ({"summary": "long"}, "reasoning.summary", "invalid_value")]
    with running_gateway({"models": SIM, "storage": f"sqlite:///{tmp_path / 'tg.db'}"}) as base:
        client = _client(base, "unused")
        for value, param, code in cases:
            with pytest.raises(openai.BadRequestError) as e:
                client.responses.create(model="gpt-4o-mini", input="hi", extra_body={"reasoning": value})
            assert (e.value.param, e.value.code) == (param, code), value
            assert param in e.value.message
        for stream in (False, True):
            r = client.responses.create(model="gpt-4o-mini", input="hi", stream=stream,
                                        reasoning={"effort": "low", "summary": "auto"})
            if stream:
                assert [ev.type for ev in r][-1] == "response.completed"
            else:
                assert r.status == "completed"
        assert client.responses.create(model="gpt-4o-mini", input="hi", extra_body={"reasoning": None}).status
