"""`tiergate keys create|list|update|revoke` and `tiergate spend`.

Two ways to reach the data, same output (the admin API's objects, `--json` prints them as they are):
- over HTTP to a running gateway's admin API (default): `--url` (env TIERGATE_URL, default
  http://127.0.0.1:4000; the SDK base URL `…/v1` is accepted too) and `--master-key` (env
  TIERGATE_MASTER_KEY);
- straight to the database with `--storage URL` (sqlite:///… or postgresql://…), e.g. before the
  gateway is started. With `--storage` a budget key's `usage` is what the ledger says (no Redis counters
  are read, so live reservations are not in it). Only `keys create` creates a database (a SQLite file, a
  PostgreSQL `?schema=`) that is not there; the other commands say so and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, NoReturn

EXIT_CODES = """exit status:
  0  done
  2  a mistake in the command line, or a value the gateway refuses with a 400 (with --storage: the
     same checks, made here): bad --metadata JSON, a --url that is not an http(s) URL, an unsupported
     --storage URL, a SQLite file or PostgreSQL schema that is not there, --rpm 0, --tpm -5,
     --budget-usd -1, an empty --models or an unknown --models name, a --start/--end that cannot be read
  1  anything else: the gateway cannot be reached, wants the master key (401), has its admin API off
     (403: no master key), has no such key (404), or the database cannot be used"""


def add_admin_commands(sub: argparse._SubParsersAction) -> None:
    def parser(parent: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=text, epilog=EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("TIERGATE_URL", "http://127.0.0.1:4000"),
                       help="gateway base URL, e.g. http://127.0.0.1:4000 (a trailing /v1 is dropped; env TIERGATE_URL)")
        p.add_argument("--master-key", default=os.environ.get("TIERGATE_MASTER_KEY"),
                       help="the gateway's master key (env TIERGATE_MASTER_KEY)")
        p.add_argument("--storage", help="talk to this database directly instead of a running gateway")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    keys = parser(sub, "keys", "create, list, change and revoke virtual API keys")
    ks = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def key_fields(p: argparse.ArgumentParser, create: bool) -> None:
        def clearable(flag: str, clear: str, clear_help: str, **kw: Any) -> None:
            if create:
                p.add_argument(flag, **kw)
                return
            g = p.add_mutually_exclusive_group()
            g.add_argument(flag, **kw)
            g.add_argument(clear, action="store_true", help=clear_help)

        unchanged = " (default: none)" if create else " (unchanged unless given)"
        clearable("--budget-usd", "--no-budget", "remove the key's budget (no spend cap)", type=float,
                  help="spend cap in USD" + unchanged)
        p.add_argument("--budget-period", choices=["none", "daily", "monthly"], default="none" if create else None)
        clearable("--rpm", "--no-rpm", "remove the key's requests-per-minute limit", type=int,
                  help="requests per minute" + unchanged)
        clearable("--tpm", "--no-tpm", "remove the key's tokens-per-minute limit", type=int,
                  help="tokens per minute" + unchanged)
        if create:
            p.add_argument("--models", help="comma-separated models the key may use (default: all models)")
        else:
            g = p.add_mutually_exclusive_group()
            g.add_argument("--models", help="comma-separated models the key may use from now on (replaces its list)")
            g.add_argument("--all-models", action="store_true", help="let the key use every model (removes its list)")
        p.add_argument("--metadata", help="JSON object stored with the key")
        p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=False if create else None,
                       help="serve deterministic requests of this key from the response cache")
        p.add_argument("--config", default=os.environ.get("TIERGATE_CONFIG"),
                       help="with --storage: the gateway's config file, so --models may name its models "
                       "(env TIERGATE_CONFIG; without it only catalogue names are known)")

    c = parser(ks, "create", "create a key (the secret is printed once)")
    c.add_argument("name")
    key_fields(c, True)
    common(c)
    c.set_defaults(func=_run, op="create")
    ls = parser(ks, "list", "list keys")
    ls.add_argument("--active", action="store_true", help="hide revoked keys")
    common(ls)
    ls.set_defaults(func=_run, op="list")
    u = parser(ks, "update", "change a key's name, budget, limits, models or cache flag")
    u.add_argument("id")
    u.add_argument("--name")
    key_fields(u, False)
    common(u)
    u.set_defaults(func=_run, op="update")
    r = parser(ks, "revoke", "revoke a key (refused by every replica within 1 s)")
    r.add_argument("id")
    common(r)
    r.set_defaults(func=_run, op="revoke")

    sp = parser(sub, "spend", "spend report from the ledger")
    sp.add_argument("--group-by", default="key",
                    choices=["key", "model", "deployment", "day", "requested_model", "status"])
    sp.add_argument("--start", help="YYYY-MM-DD, ISO datetime or epoch seconds (default: 30 days ago)")
    sp.add_argument("--end", help="exclusive (default: now)")
    sp.add_argument("--key-id")
    common(sp)
    sp.set_defaults(func=_run, op="spend")


def _fields(a: argparse.Namespace) -> dict[str, Any]:
    f: dict[str, Any] = {}
    for name in ("name", "budget_usd", "budget_period", "rpm", "tpm", "cache"):
        v = getattr(a, name, None)
        if v is not None:
            f[name] = v
    for flag, name in (("no_budget", "budget_usd"), ("no_rpm", "rpm"), ("no_tpm", "tpm"), ("all_models", "models")):
        if getattr(a, flag, False):
            f[name] = None  # the admin API's null: no budget, no limit, every model
    if a.models is not None:
        f["models"] = [m.strip() for m in a.models.split(",") if m.strip()]
        if not f["models"]:  # an empty list (or an unset $VAR) meant null: every model
            clear = " (to let the key use every model, pass --all-models)" if a.op == "update" else \
                " (leave --models out to let the key use every model)"
            _usage_error(f"--models {a.models!r} names no model: pass comma-separated model names{clear}")
    if a.metadata is not None:
        try:
            f["metadata"] = json.loads(a.metadata)
        except ValueError as e:
            _usage_error(f"--metadata is not valid JSON ({e}): pass a JSON object such as '{{\"team\": \"search\"}}'")
        if not isinstance(f["metadata"], dict):
            _usage_error("--metadata must be a JSON object such as '{\"team\": \"search\"}', got "
                         f"{type(f['metadata']).__name__}")
        from tiergate.server.admin import MAX_METADATA_BYTES

        if len(json.dumps(f["metadata"], separators=(",", ":")).encode()) > MAX_METADATA_BYTES:
            _usage_error(f"--metadata is too large: at most {MAX_METADATA_BYTES // 1024} KiB of JSON (as the "
                         "admin API accepts)")
    return f


def _usage_error(message: str) -> NoReturn:
    """A mistake in the command line: one line and exit status 2 (the one argparse uses)."""
    print(f"tiergate: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------- transports


def _gateway_root(url: str) -> str:
    """The gateway's base URL from `--url`: `http://host:port`, with a trailing `/v1` (the base URL the
    OpenAI SDKs are given, as the README writes it) or `/admin` dropped. Anything but an http(s) URL
    with a host is a usage error."""
    root = url.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(root)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as e:
        _usage_error(f"--url {url!r} is not a valid URL ({e}): pass the gateway's base URL, e.g. http://127.0.0.1:4000")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        _usage_error(f"--url {url!r} is not an http(s) URL: pass the gateway's base URL, e.g. http://127.0.0.1:4000")
    for suffix in ("/v1", "/admin"):
        root = root.removesuffix(suffix)
    return root


def _http(a: argparse.Namespace, method: str, path: str, body: dict | None = None,
          query: dict | None = None) -> Any:
    import http.client

    root = _gateway_root(a.url)
    path = "/admin" + path  # the real path, named in every message
    url = root + path
    if query:
        url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("content-type", "application/json")
    if a.master_key:
        req.add_header("authorization", f"Bearer {a.master_key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        code, msg = None, e.reason
        try:
            err = json.loads(e.read())["error"]
            code, msg = err.get("code"), err["message"]
        except (ValueError, KeyError, TypeError, AttributeError, OSError, http.client.HTTPException):
            pass
        if code == "admin_api_disabled":
            raise SystemExit(f"tiergate: the gateway at {root} has no master key, so its admin API is off: restart "
                             "it with TIERGATE_MASTER_KEY set (or `master_key:` in its config) and pass the same key "
                             "(--master-key or TIERGATE_MASTER_KEY), or use --storage URL to work on its database "
                             "directly") from None
        if e.code == 401 and not a.master_key:
            msg = f"{msg} (no master key was given: pass --master-key or set TIERGATE_MASTER_KEY)"
        if e.code == 404 and code in (None, "unknown_url"):
            msg = f"{msg} (is {root} the gateway's base URL? pass it as http://HOST:PORT)"
        if e.code == 400:  # a value the gateway refuses (--rpm 0, --budget-usd -1, …): a command-line mistake
            _usage_error(f"{method} {path} failed ({e.code}): {msg}")
        raise SystemExit(f"tiergate: {method} {path} failed ({e.code}): {msg}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise SystemExit(f"tiergate: cannot reach the gateway at {root} ({reason}); start it with "
                         "`tiergate serve`, pass --url, or use --storage URL to read the database directly") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise SystemExit(f"tiergate: {method} {path}: the answer from {root} is not JSON: is --url the gateway's "
                         "base URL?") from None


async def _direct(a: argparse.Namespace, op: str) -> Any:
    """The same operations against the store, through the same Accounting code the server runs."""
    from tiergate.accounting.service import Accounting
    from tiergate.config import ConfigError, parse_config
    from tiergate.server.admin import spend_body, spend_window
    from tiergate.wire.errors import GatewayError

    raw = {"models": [{"name": "_", "deployments": [{"provider": "sim"}]}], "storage": a.storage}
    try:  # an unsupported URL (redis://, mysql://, a bare word) is a mistake in the command line
        config = parse_config(raw, env={})
    except ConfigError as e:
        _usage_error(f"--storage{str(e).removeprefix('storage')}")
    try:
        f = _fields(a) if op in ("create", "update") else {}
        _check_models(a, f.get("models"))
    except GatewayError as e:
        _refused(e)
    if op != "create":
        _require_existing_sqlite(a.storage)
        await _require_existing_postgres(a.storage)
    from tiergate.store import StorageError

    try:
        acc = await Accounting.start(config)
    except StorageError as e:
        raise SystemExit(f"tiergate: storage error: {e}: check --storage") from None
    try:
        if op == "create":
            from tiergate.accounting.keys import PepperMismatch

            try:  # a key made with another pepper than the gateway's would never authenticate
                await acc.keys.check_pepper()
            except PepperMismatch as e:
                raise SystemExit(f"tiergate: key pepper error: {e}") from None
            info, secret = await acc.keys.create(f.pop("name"), **f)
            return {**await _key_object(acc, info), "key": secret}
        if op == "list":
            return {"object": "list",
                    "data": [await _key_object(acc, k) for k in await acc.keys.list(include_revoked=not a.active)]}
        if op in ("update", "revoke"):
            if op == "update":  # as the admin API: a revoked key is not changed (409 key_revoked)
                current = await acc.keys.get(a.id)
                if current is not None and current.revoked_at is not None:
                    raise SystemExit(f"tiergate: key {a.id!r} is revoked and cannot be changed; create a new key "
                                     "(tiergate keys create)")
            info = await (acc.keys.update(a.id, **f) if op == "update" else acc.keys.revoke(a.id))
            if info is None:
                raise SystemExit(f"tiergate: no key with id {a.id!r}")
            return await _key_object(acc, info)
        import time

        start, end = spend_window(a.start, a.end, time.time())
        return {"object": "spend_report",
                **spend_body(a.group_by, start, end, await acc.spend(a.group_by, start, end, a.key_id), a.key_id)}
    except GatewayError as e:
        _refused(e)
    finally:
        await acc.close()


async def _key_object(acc: Any, info: Any) -> dict[str, Any]:
    """A key as the admin API returns it (`object: api_key`, its fields, `usage`)."""
    from tiergate.server.admin import KeyOut

    return KeyOut(**info.public(), usage=await acc.key_usage(info)).model_dump()


def _refused(e: Any) -> NoReturn:
    """A GatewayError of the database layer (`--storage`), as the admin API would answer it: a 400 (a
    value it refuses: `rpm` 0, a negative budget, an unknown model) is a command-line mistake (exit 2)."""
    if e.status == 400:
        _usage_error(e.message)
    raise SystemExit(f"tiergate: {e.message}") from None


def _require_existing_sqlite(url: str) -> None:
    """`keys list|update|revoke` and `spend` with a SQLite `--storage` read (or change) an existing database:
    a path that names no file is a usage error, not a new empty database (and directory) and an empty
    table. `keys create` may make the database, as `tiergate serve` does."""
    if not url.startswith("sqlite://"):
        return
    from tiergate.store.sqlite import sqlite_path

    try:
        path = sqlite_path(url)
    except ValueError as e:
        _usage_error(f"{e}: check --storage")
    if path != ":memory:" and os.path.isdir(path):
        _usage_error(f"the SQLite database {path} is a directory, not a database file (--storage {url}): check the path")
    if path != ":memory:" and not os.path.exists(path):
        _usage_error(f"the SQLite database {path} does not exist (--storage {url}): check the path; the gateway "
                     "creates it on its first start, as `tiergate keys create --storage` does")


async def _require_existing_postgres(url: str) -> None:
    """`keys list|update|revoke` and `spend` with a PostgreSQL `--storage` read (or change) existing tables:
    a `?schema=` that is not there (a typo) is a usage error, not a new schema with every table in it and
    an empty table printed; so is a database without tiergate's tables. `keys create` may make them, as
    `tiergate serve` does."""
    if not url.startswith(("postgresql://", "postgres://")):
        return
    import asyncpg

    from tiergate.store.postgres import CONNECT_TIMEOUT_S, connect_reason, server_address, split_url

    try:
        dsn, schema, _ = split_url(url)
    except ValueError as e:
        _usage_error(f"{e}: check --storage")
    where = server_address(url)
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise SystemExit(f"tiergate: storage error: cannot connect to PostgreSQL at {where} "
                         f"({connect_reason(e, url)}): check --storage") from None
    try:
        if schema is not None:
            found = await conn.fetchval("SELECT 1 FROM information_schema.schemata WHERE schema_name = $1", schema)
        else:
            schema = await conn.fetchval("SELECT current_schema()")
            found = True
        tables = found and await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{schema}".api_keys')
    finally:
        await conn.close()
    if not found:
        _usage_error(f"the PostgreSQL schema {schema!r} does not exist at {where} (--storage ...?schema={schema}): "
                     "check the name; the gateway creates it on its first start, as `tiergate keys create "
                     "--storage` does")
    if not tables:
        _usage_error(f"the PostgreSQL schema {schema!r} at {where} has no tiergate tables: check --storage; the "
                     "gateway creates them on its first start, as `tiergate keys create --storage` does")


def _check_models(a: argparse.Namespace, models: list[str] | None) -> None:
    """The admin API's allow-list check, for `--storage` (no gateway to ask): configured names come
    from `--config` when given, catalogue names always."""
    if not models:
        return
    import yaml

    from tiergate.catalog.catalog import Catalog
    from tiergate.server.admin import check_key_models

    configured: list[str] = []
    catalog_file = None
    if a.config:  # only the model names (and catalogue override): no secrets need to be resolvable here
        from tiergate.config import yaml_error_text

        try:
            with open(a.config, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh) or {}
        except OSError as e:
            _usage_error(f"cannot read --config {a.config}: {e.strerror or e}")
        except UnicodeDecodeError:
            _usage_error(f"--config {a.config} is not a UTF-8 text file: pass the gateway's YAML config file")
        except yaml.YAMLError as e:
            _usage_error(f"--config {yaml_error_text(a.config, e)}")
        models_cfg = raw.get("models") if isinstance(raw, dict) else None
        configured = [str(m["name"]) for m in models_cfg or () if isinstance(m, dict) and m.get("name")]
        catalog_file = raw.get("catalog_file") if isinstance(raw, dict) else None
    hint = "" if a.config else " Pass --config FILE (or set TIERGATE_CONFIG) so the gateway's configured names are known."
    check_key_models(models, configured, Catalog.load(catalog_file).names(), hint=hint)


def _run(a: argparse.Namespace) -> int:
    op = a.op
    if a.storage:
        out = asyncio.run(_direct(a, op))
    elif op == "create":
        out = _http(a, "POST", "/keys", {**_fields(a)})
    elif op == "list":
        out = _http(a, "GET", "/keys", query={"include_revoked": str(not a.active).lower()})
    elif op == "update":
        out = _http(a, "PATCH", f"/keys/{a.id}", _fields(a))
    elif op == "revoke":
        out = _http(a, "DELETE", f"/keys/{a.id}")
    else:
        out = _http(a, "GET", "/spend", query={"group_by": a.group_by, "start": a.start, "end": a.end,
                                               "key_id": a.key_id})
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        _print(op, out)
    return 0


def _print(op: str, out: dict[str, Any]) -> None:
    if op == "create":
        print(f"created key {out['id']} ({out['name']})")
        print(f"  key: {out['key']}")
        print("  store it now: it is not shown again")
        return
    if op in ("update", "revoke"):
        state = "revoked" if out.get("revoked_at") else "active"
        print(f"{out['id']} {out['prefix']}… {out['name']}: {state}")
        return
    if op == "list":
        rows = out["data"]
        print(f"{'id':<21} {'prefix':<12} {'name':<20} {'budget':>12} {'period':<8} {'rpm':>6} {'tpm':>8} state")
        for k in rows:
            budget = f"${k['budget_usd']:g}" if k.get("budget_usd") is not None else "-"
            print(f"{k['id']:<21} {k['prefix']:<12} {k['name'][:20]:<20} {budget:>12} {k['budget_period']:<8} "
                  f"{k['rpm'] or '-':>6} {k['tpm'] or '-':>8} {'revoked' if k.get('revoked_at') else 'active'}")
        return
    g = out["group_by"]
    print(f"{g:<24} {'requests':>9} {'cost USD':>12} {'input':>10} {'cached':>9} {'output':>10} {'reasoning':>10}")
    for r in out["data"]:
        print(f"{str(r[g])[:24]:<24} {r['requests']:>9} {r['cost_usd']:>12.6f} {r['input_tokens']:>10} "
              f"{r['cached_tokens']:>9} {r['output_tokens']:>10} {r['reasoning_tokens']:>10}")
    print(f"{'total':<24} {sum(r['requests'] for r in out['data']):>9} {out['total_usd']:>12.6f}")
