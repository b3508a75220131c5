"""`tiergate batch submit|status|results|list|cancel`: the Batch API from the command line, over HTTP to
a running gateway (`--url`, env TIERGATE_URL, default http://127.0.0.1:4000; `--api-key`, env
TIERGATE_API_KEY, else TIERGATE_MASTER_KEY). `submit --wait` and `status --watch` draw a progress bar
from the batch's `request_counts` until it ends. Standard library HTTP only, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

TERMINAL = ("completed", "failed", "expired", "cancelled")


class CliError(Exception):
    """A one-line error; `status` is the exit status: 2 for what the user typed or sent (a 400), 1 for
    everything else (not found, auth, an unreachable gateway), as `tiergate keys` exits."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def add_batch_commands(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("batch", help="submit batch jobs and follow them (OpenAI Batch API)")
    bs = b.add_subparsers(dest="batch_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", default=os.environ.get("TIERGATE_URL", "http://127.0.0.1:4000"),
                       help="gateway base URL (env TIERGATE_URL)")
        p.add_argument("--api-key", default=os.environ.get("TIERGATE_API_KEY") or os.environ.get("TIERGATE_MASTER_KEY"),
                       help="tiergate key (env TIERGATE_API_KEY or TIERGATE_MASTER_KEY)")
        return p

    s = common(bs.add_parser("submit", help="upload a JSONL file and create a batch"))
    s.add_argument("file", type=Path, help="JSONL: one {custom_id, method, url, body} per line")
    s.add_argument("--endpoint", default="/v1/chat/completions", choices=["/v1/chat/completions", "/v1/responses"])
    s.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--wait", action="store_true", help="show progress until the batch ends")
    s.set_defaults(func=_handled(_submit))
    st = common(bs.add_parser("status", help="show a batch's status and counts"))
    st.add_argument("batch_id")
    st.add_argument("--watch", action="store_true", help="show progress until the batch ends")
    st.set_defaults(func=_handled(_status))
    r = common(bs.add_parser("results", help="download a batch's output (and error) lines"))
    r.add_argument("batch_id")
    r.add_argument("--output", "-o", type=Path, help="write output lines here (default: stdout)")
    r.add_argument("--errors", type=Path, help="write error lines here (default: stderr)")
    r.set_defaults(func=_handled(_results))
    ls = common(bs.add_parser("list", help="list recent batches"))
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=_handled(_list))
    c = common(bs.add_parser("cancel", help="cancel a batch (finished lines keep their results)"))
    c.add_argument("batch_id")
    c.set_defaults(func=_handled(_cancel))


# ---------------------------------------------------------------- HTTP


def _call(args: argparse.Namespace, method: str, path: str, body: bytes | None = None,
          content_type: str = "application/json") -> bytes:
    base = args.url.rstrip("/")
    for suffix in ("/v1", "/admin"):  # the SDK's base_url form is accepted too
        base = base.removesuffix(suffix)
    url = base + path
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("content-type", content_type)
    if args.api_key:
        req.add_header("authorization", f"Bearer {args.api_key}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            msg = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = raw[:300].decode("utf-8", "replace")
        raise CliError(f"{method} {path}: HTTP {e.code}: {msg}", 2 if e.code == 400 else 1) from None
    except urllib.error.URLError as e:
        raise CliError(f"cannot reach the gateway at {args.url} ({e.reason}); is `tiergate serve` running?",
                       1) from None


def _json(args: argparse.Namespace, method: str, path: str, obj: Any = None) -> dict[str, Any]:
    return json.loads(_call(args, method, path, None if obj is None else json.dumps(obj).encode()))


def _multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: application/jsonl\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# ---------------------------------------------------------------- commands


def _summary(b: dict[str, Any]) -> str:
    rc = b.get("request_counts") or {}
    line = (f"{b['id']}  {b['status']}  {rc.get('completed', 0)}/{rc.get('total', 0)} done, "
            f"{rc.get('failed', 0)} failed")
    if b.get("output_file_id"):
        line += f"  output={b['output_file_id']}"
    if b.get("error_file_id"):
        line += f"  errors={b['error_file_id']}"
    for e in ((b.get("errors") or {}).get("data") or [])[:10]:
        line += f"\n  line {e.get('line')}: {e.get('code')}: {e.get('message')}"
    return line


def _follow(args: argparse.Namespace, batch_id: str, interval: float = 1.0) -> dict[str, Any]:
    from tqdm import tqdm

    b = _json(args, "GET", f"/v1/batches/{batch_id}")
    total = (b.get("request_counts") or {}).get("total", 0)
    tqdm.monitor_interval = 0  # no monitor thread: the bar is refreshed by this loop
    with tqdm(total=total, unit="req", desc=batch_id[:18], file=sys.stderr, dynamic_ncols=True) as bar:
        while True:
            rc = b.get("request_counts") or {}
            bar.n = rc.get("completed", 0) + rc.get("failed", 0)
            bar.set_postfix(status=b["status"], failed=rc.get("failed", 0))
            bar.refresh()
            if b["status"] in TERMINAL:
                return b
            time.sleep(interval)
            b = _json(args, "GET", f"/v1/batches/{batch_id}")


def _submit(args: argparse.Namespace) -> int:
    if not args.file.exists():
        raise CliError(f"{args.file}: no such file")
    meta = {}
    for kv in args.metadata:  # checked before the upload: a typo here used to leave an orphan file behind
        k, sep, v = kv.partition("=")
        if not sep:
            raise CliError(f"--metadata {kv!r}: use KEY=VALUE")
        meta[k] = v
    body, ctype = _multipart({"purpose": "batch"}, args.file.name, args.file.read_bytes())
    f = json.loads(_call(args, "POST", "/v1/files", body, ctype))
    b = _json(args, "POST", "/v1/batches", {"input_file_id": f["id"], "endpoint": args.endpoint,
                                            "completion_window": "24h", **({"metadata": meta} if meta else {})})
    print(b["id"])
    if args.wait and b["status"] not in TERMINAL:
        b = _follow(args, b["id"])
    if args.wait or b["status"] == "failed":
        print(_summary(b), file=sys.stderr)
    return 0 if b["status"] != "failed" else 1


def _status(args: argparse.Namespace) -> int:
    b = _follow(args, args.batch_id) if args.watch else _json(args, "GET", f"/v1/batches/{args.batch_id}")
    print(_summary(b))
    return 0


def _results(args: argparse.Namespace) -> int:
    b = _json(args, "GET", f"/v1/batches/{args.batch_id}")
    if b["status"] not in TERMINAL:
        raise CliError(f"batch {args.batch_id} is still {b['status']}; try `tiergate batch status --watch`")
    for fid, dest, stream, what in ((b.get("output_file_id"), args.output, sys.stdout, "output"),
                                    (b.get("error_file_id"), args.errors, sys.stderr, "error")):
        if not fid:
            if dest is not None:  # asked for a file that will not be written: say so rather than nothing
                print(f"tiergate: batch {args.batch_id} has no {what} file (no {'failed' if what == 'error' else 'answered'} "
                      f"lines); {dest} not written", file=sys.stderr)
            continue
        data = _call(args, "GET", f"/v1/files/{fid}/content")
        if dest is not None:
            dest.write_bytes(data)
        else:
            stream.write(data.decode())
            stream.flush()
    return 0


def _list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 100:  # as the API: a limit outside 1-100 is an error, not quietly clamped
        print(f"tiergate: --limit must be between 1 and 100, got {args.limit}", file=sys.stderr)
        return 2
    for b in _json(args, "GET", f"/v1/batches?limit={args.limit}")["data"]:
        print(_summary(b))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    print(_summary(_json(args, "POST", f"/v1/batches/{args.batch_id}/cancel", {})))
    return 0


def _handled(fn):
    """Print a one-line error instead of a traceback for what the user can fix."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or 0)
        except CliError as e:
            print(f"tiergate batch: {e}", file=sys.stderr)
            return e.status

    return run
