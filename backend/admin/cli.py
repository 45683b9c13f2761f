"""``python -m backend admin status|set|activate|delete|train [--full]|cancel ...``: the admin API from a terminal.

The backend's URL comes from ``--url`` or SAMLOOP_URL (default http://localhost:9090), the token from
``--token`` or ADMIN_TOKEN. Exit status: 0 done, 2 refused request (the message says why), 3 backend
unreachable, 4 token refused, 5 no console at that URL (ADMIN_TOKEN unset on the backend).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

import httpx

__all__ = ["main"]

DEFAULT_URL = "http://localhost:9090"


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse_value(text: str) -> Any:
    """``key=value`` values: true/false/on/off, null/none, whole numbers, else the text itself."""
    lowered = text.strip().lower()
    if lowered in {"true", "on", "yes"}:
        return True
    if lowered in {"false", "off", "no"}:
        return False
    if lowered in {"null", "none", ""}:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"expected key=value (e.g. predictions=off), got {pair!r}", 2)
        changes[key.strip()] = parse_value(value)
    return changes


class AdminClient:
    """Calls /admin/api with the Bearer token and turns failures into CliError with a clear message."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        if not token:
            raise CliError("no admin token: pass --token or set ADMIN_TOKEN (the backend's ADMIN_TOKEN)", 4)
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=f"{self.url}/admin/api", timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach the samloop backend at {self.url} ({type(exc).__name__}: {exc}); "
                           "is it running? (--url or SAMLOOP_URL)", 3) from exc
        detail = _detail(response)
        if response.status_code == 401:
            raise CliError(f"the backend at {self.url} refused the admin token: {detail}", 4)
        if response.status_code == 404 and detail == "Not Found":
            raise CliError(f"no admin console at {self.url}/admin/api: is ADMIN_TOKEN set on the backend?", 5)
        if response.status_code >= 400:
            raise CliError(f"{method} {path}: {response.status_code} {detail}", 2)
        return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def describe(project: dict) -> str:
    """A project in a few lines: what is served, the switches, versions, the job and the last run."""
    switches = ", ".join(f"{k}={v}" for k, v in project["switches"].items())
    lines = [f"project {project['id']}: serving {project['model_version']}", f"  switches: {switches}"]
    for row in project["versions"]:
        state = " ".join(s for s, on in (("active", row["active"]), ("pinned", row["pinned"])) if on)
        lines.append(f"  v{row['version']:<4} {_when(row['created'])}  mIoU {_num(row['mean_iou'])}  "
                     f"NoC@90 {_num(row['noc90'], 2)}  {state}")
    job = project.get("job")
    if job:
        lines.append(f"  job {job['job_id']}: {job.get('stage') or job['status']}, step {job.get('step')} of "
                     f"{job.get('max_steps')}, loss {_num(job.get('loss'), 4)}, "
                     f"ETA {_num(job.get('eta_seconds'), 0)} s")
    run = project.get("last_run")
    if run:
        lines.append(f"  last run: {run['status']} at {_when(run['finished_at'])} ({_num(run.get('seconds'), 1)} s): "
                     f"{run.get('reason') or ''}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend admin", description="samloop admin console (CLI)")
    parser.add_argument("--url", default=os.environ.get("SAMLOOP_URL", DEFAULT_URL),
                        help=f"the backend's URL (default: $SAMLOOP_URL or {DEFAULT_URL})")
    parser.add_argument("--token", default=os.environ.get("ADMIN_TOKEN", ""),
                        help="admin token (default: $ADMIN_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="projects: served version, switches, versions, job, last run")
    status.add_argument("project", nargs="?")
    change = commands.add_parser("set", help="switches, e.g. set 3 predictions=off adapter=encoder")
    change.add_argument("project")
    change.add_argument("assignments", nargs="+", metavar="key=value")
    for name, text in (("activate", "make a stored version active (roll back or forward)"),
                       ("delete", "delete a stored version (not the active or pinned one)")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("project")
        sub.add_argument("version", type=int)
    move = commands.add_parser("move", help="move a project's adapters and switches to another key, e.g. "
                               "move 3 3.1712345678 (what a bare id held before keys named the instance)")
    move.add_argument("project")
    move.add_argument("to")
    train = commands.add_parser("train", help="queue a training run now")
    train.add_argument("project")
    train.add_argument("--full", action="store_true", help="retrain from scratch, not from the active version")
    commands.add_parser("cancel", help="stop the running job, drop the queued one").add_argument("project")
    return parser


def run(args: argparse.Namespace) -> Any:
    client = AdminClient(args.url, args.token)
    base = f"/projects/{args.project}" if getattr(args, "project", None) else "/projects"
    if args.command == "status":
        return client.call("GET", base)
    if args.command == "set":
        return client.call("PATCH", base, parse_assignments(args.assignments))
    if args.command == "activate":
        return client.call("POST", f"{base}/activate", {"version": args.version})
    if args.command == "move":
        return client.call("POST", f"{base}/move", {"to": args.to})
    if args.command == "delete":
        return client.call("DELETE", f"{base}/versions/{args.version}")
    if args.command == "train":
        return client.call("POST", f"{base}/train", {"full": True} if args.full else None)
    return client.call("POST", f"{base}/cancel")


def render(answer: Any) -> str:
    if "projects" in answer:
        return "\n".join(describe(p) for p in answer["projects"]) or "no projects yet"
    if "moved" in answer:
        return f"{answer['moved']}\n{describe(answer['project'])}"
    if "training" in answer:
        training = answer["training"]
        return f"{json.dumps(training)}\n{describe(answer['project'])}"
    return describe(answer)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        answer = run(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    print(json.dumps(answer, indent=2) if args.json else render(answer))
    return 0
