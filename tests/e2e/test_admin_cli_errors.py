"""`tiergate keys …` / `tiergate spend` mistakes are one line (`tiergate: …`) with exit status 2 for a bad
command line or a value the gateway refuses with a 400, and 1 otherwise, never a traceback: bad --metadata JSON, a --url that is not
an http(s) URL, an unreadable --config; the README's base URL (`…/v1`) works as --url and messages name the
real path (/admin/keys); read-only commands do not create a SQLite database that is not there; a gateway
without a master key (admin API off) is said so plainly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import running_gateway

MASTER = "sk-admin-cli-master-0123456789"
MODELS = [{"name": "gpt-4o-mini", "deployments": [{"provider": "sim"}]}]


def _cli(*args: str, master: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TIERGATE_MASTER_KEY", "TIERGATE_URL", "TIERGATE_CONFIG")}
    if master:
        env["TIERGATE_MASTER_KEY"] = master
    return subprocess.run([sys.executable, "-m", "tiergate.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def _one_line(p: subprocess.CompletedProcess, rc: int) -> str:
    assert p.returncode == rc, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    return p.stderr.strip()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    db = tmp_path_factory.mktemp("keyed") / "tg.db"
    with running_gateway({"models": MODELS, "storage": f"sqlite:///{db}"}, env={"TIERGATE_MASTER_KEY": MASTER}) as base:
        yield base  # http://127.0.0.1:PORT/v1, the README's form


# ------------------------------------------------------------------ command-line mistakes (exit 2)


def test_bad_metadata_json_is_one_line(tmp_path):
    err = _one_line(_cli("keys", "create", "b", "--metadata", "{bad", "--url", "http://127.0.0.1:9"), 2)
    assert err.startswith("tiergate: --metadata is not valid JSON (")
    assert err.endswith("pass a JSON object such as '{\"team\": \"search\"}'")
    err = _one_line(_cli("keys", "create", "b", "--metadata", "[1]", "--storage", f"sqlite:///{tmp_path / 'x.db'}"), 2)
    assert err == "tiergate: --metadata must be a JSON object such as '{\"team\": \"search\"}', got list"
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(("url", "want"), [
    ("notaurl", "tiergate: --url 'notaurl' is not an http(s) URL: pass the gateway's base URL, e.g. http://127.0.0.1:4000"),
    ("ftp://h/x", "tiergate: --url 'ftp://h/x' is not an http(s) URL"),
    ("http://127.0.0.1:99999", "tiergate: --url 'http://127.0.0.1:99999' is not a valid URL ("),
])
def test_a_url_that_is_not_one_is_one_line(url, want):
    assert _one_line(_cli("keys", "list", "--url", url), 2).startswith(want)


def test_an_unreadable_config_for_models_is_one_line(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    bad = tmp_path / "gw.yaml"
    bad.write_text("models: [a, b\n")
    err = _one_line(_cli("keys", "create", "k", "--models", "gpt-4o-mini", "--storage", db, "--config", str(bad)), 2)
    assert err.startswith(f"tiergate: --config {bad}, line 2, column 1: not valid YAML: expected ',' or ']'")
    binary = tmp_path / "prog"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe")
    err = _one_line(_cli("keys", "create", "k", "--models", "gpt-4o-mini", "--storage", db, "--config", str(binary)), 2)
    assert err == f"tiergate: --config {binary} is not a UTF-8 text file: pass the gateway's YAML config file"


# ------------------------------------------------------------------ --url: the base URL, real paths


def test_the_readme_base_url_with_v1_works(keyed):
    p = _cli("keys", "create", "team", "--url", keyed, master=MASTER)
    assert p.returncode == 0, p.stderr
    for url in (keyed, keyed + "/", keyed.removesuffix("/v1")):
        p = _cli("keys", "list", "--url", url, "--json", master=MASTER)
        assert p.returncode == 0 and '"name": "team"' in p.stdout, (url, p.stderr)
    assert _cli("spend", "--url", keyed, master=MASTER).returncode == 0


def test_messages_name_the_real_admin_path(keyed):
    err = _one_line(_cli("keys", "revoke", "nope", "--url", keyed, master=MASTER), 1)
    assert err == "tiergate: DELETE /admin/keys/nope failed (404): No key with id 'nope'. List keys with GET /admin/keys."
    root = keyed.removesuffix("/v1")
    err = _one_line(_cli("keys", "list", "--url", root + "/api", master=MASTER), 1)
    assert err == (f"tiergate: GET /admin/keys failed (404): Unknown request URL: GET /api/admin/keys. (is {root}/api "
                   "the gateway's base URL? pass it as http://HOST:PORT)")


# ------------------------------------------------------------------ --storage: read-only commands create nothing


@pytest.mark.parametrize("args", [("keys", "list"), ("spend",), ("keys", "revoke", "k_1"), ("keys", "update", "k_1", "--rpm", "5")])
def test_read_only_commands_do_not_create_a_database(tmp_path, args):
    missing = tmp_path / "no" / "dir" / "x.db"
    err = _one_line(_cli(*args, "--storage", f"sqlite:///{missing}"), 2)
    assert err == (f"tiergate: the SQLite database {missing} does not exist (--storage sqlite:///{missing}): check the "
                   "path; the gateway creates it on its first start, as `tiergate keys create --storage` does")
    assert not (tmp_path / "no").exists()
    err = _one_line(_cli(*args, "--storage", f"sqlite:///{tmp_path}"), 2)
    assert err == f"tiergate: the SQLite database {tmp_path} is a directory, not a database file (--storage sqlite:///{tmp_path}): check the path"


def test_keys_create_still_makes_the_database(tmp_path):
    db = tmp_path / "new" / "tg.db"
    p = _cli("keys", "create", "first", "--storage", f"sqlite:///{db}")
    assert p.returncode == 0 and db.exists(), p.stderr
    p = _cli("keys", "list", "--storage", f"sqlite:///{db}")
    assert p.returncode == 0 and "first" in p.stdout


# ------------------------------------------------------------------ a gateway without a master key


def test_a_gateway_without_a_master_key_is_said_plainly(tmp_path):
    with running_gateway({"models": MODELS, "storage": f"sqlite:///{tmp_path / 'open.db'}"},
                         env={"TIERGATE_MASTER_KEY": ""}) as base:
        root = base.removesuffix("/v1")
        for args in (("keys", "list"), ("spend",), ("keys", "create", "x")):
            err = _one_line(_cli(*args, "--url", base), 1)
            assert err == (f"tiergate: the gateway at {root} has no master key, so its admin API is off: restart it "
                           "with TIERGATE_MASTER_KEY set (or `master_key:` in its config) and pass the same key "
                           "(--master-key or TIERGATE_MASTER_KEY), or use --storage URL to work on its database "
                           "directly")


def test_a_missing_master_key_is_hinted(keyed):
    err = _one_line(_cli("keys", "list", "--url", keyed), 1)
    assert err.startswith("tiergate: GET /admin/keys failed (401): The admin API needs the gateway's master key")
    assert err.endswith("(no master key was given: pass --master-key or set TIERGATE_MASTER_KEY)")


# ------------------------------------------------------------------ an unsupported --storage URL


@pytest.mark.parametrize("url", ["redis://127.0.0.1:5432/x", "mysql://x", "nonsense"])
@pytest.mark.parametrize("args", [("keys", "list"), ("spend",), ("keys", "create", "k")])
def test_an_unsupported_storage_url_is_one_line(url, args):
    """Was a ConfigError traceback with exit status 1 (`tiergate serve` says the same mistake in one line)."""
    scheme = url.split("://")[0]
    err = _one_line(_cli(*args, "--storage", url), 2)
    assert err == f"tiergate: --storage: unsupported URL {scheme!r}; use sqlite:///./tiergate.db or postgresql://…"


# ------------------------------------------------------------------ values the gateway refuses (400): exit 2


def test_values_the_gateway_refuses_exit_2_over_http(keyed):
    """Was exit status 1 (as for an unreachable gateway) while --metadata / --url mistakes exit 2."""
    p = _cli("keys", "create", "v", "--url", keyed, "--json", master=MASTER)
    assert p.returncode == 0, p.stderr
    kid = json.loads(p.stdout)["id"]
    for args, param in ((("keys", "update", kid, "--rpm", "0"), "rpm"),
                        (("keys", "update", kid, "--budget-usd", "-1"), "budget_usd"),
                        (("keys", "create", "w", "--tpm", "-5"), "tpm")):
        err = _one_line(_cli(*args, "--url", keyed, master=MASTER), 2)
        assert f"failed (400): Invalid value for '{param}'" in err, err
    err = _one_line(_cli("keys", "update", "k_nope", "--rpm", "5", "--url", keyed, master=MASTER), 1)  # 404: 1
    assert "failed (404)" in err


def test_values_the_database_layer_refuses_exit_2_with_storage(tmp_path):
    db = f"sqlite:///{tmp_path / 'v.db'}"
    p = _cli("keys", "create", "v", "--storage", db, "--json")
    assert p.returncode == 0, p.stderr
    kid = json.loads(p.stdout)["id"]
    assert _one_line(_cli("keys", "update", kid, "--rpm", "0", "--storage", db), 2) == (
        "tiergate: `rpm` must be a positive integer or null (no limit).")
    assert _one_line(_cli("keys", "update", kid, "--budget-usd", "-1", "--storage", db), 2).startswith(
        "tiergate: `budget_usd` must be a number from 0")
    assert _one_line(_cli("keys", "create", "w", "--rpm", "0", "--storage", db), 2).startswith("tiergate: `rpm`")
    assert _one_line(_cli("keys", "create", "w", "--models", "nosuchmodel", "--storage", db), 2).startswith(
        "tiergate: models[0]: unknown model 'nosuchmodel'.")
    assert _one_line(_cli("keys", "update", "k_nope", "--rpm", "5", "--storage", db), 1) == (
        "tiergate: no key with id 'k_nope'")


@pytest.mark.parametrize("args", [("keys",), ("keys", "create"), ("keys", "update"), ("keys", "list"),
                                  ("keys", "revoke"), ("spend",)])
def test_help_documents_the_exit_codes(args):
    p = _cli(*args, "--help")
    assert p.returncode == 0
    assert "exit status:\n  0  done\n  2  a mistake in the command line, or a value the gateway refuses" in p.stdout
    assert "--rpm 0, --tpm -5, --budget-usd -1" in p.stdout.replace("\n     ", " ")


def test_storage_mode_applies_the_admin_apis_revoked_and_metadata_checks(tmp_path):
    """`--storage` said it makes the API's checks locally, but changed a revoked key and stored any metadata."""
    import json as _json

    db = f"sqlite:///{tmp_path / 'tg.db'}"
    made = _cli("keys", "create", "gone", "--storage", db, "--json")
    assert made.returncode == 0, made.stderr
    kid = _json.loads(made.stdout)["id"]
    assert _cli("keys", "revoke", kid, "--storage", db).returncode == 0
    err = _one_line(_cli("keys", "update", kid, "--rpm", "9", "--storage", db), 1)
    assert "is revoked and cannot be changed" in err
    big = _json.dumps({"blob": "x" * 17_000})
    err = _one_line(_cli("keys", "create", "big", "--metadata", big, "--storage", db), 2)
    assert "--metadata is too large" in err
