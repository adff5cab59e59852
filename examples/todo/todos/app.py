"""The TODO demo's todos service (examples/todo/README.md), a plain ASGI app
served behind the gateway by the repository's Python adapter
(adapters/python, `forwarding_adapter`).

Whose todos a request reads or writes is named by one thing only: the
`x-auth-subject` header, which the gateway sets from the `sub` claim of a
token it verified (and removes from what the client sent). The service never
looks at the token itself; a request without the header is refused (the
gateway's configuration would be wrong).

Routes (the registered prefix is `/todos`):

* ``GET /todos`` - the caller's todos; ``POST /todos`` ``{"title"}`` - 201.
* ``GET|PATCH|DELETE /todos/{id}`` - one of the caller's todos (another
  user's is a 404: its existence is not revealed). PATCH takes ``title``
  and/or ``done``.
* ``GET /todos/stats`` - public counts for everyone, cacheable
  (``Cache-Control: public, max-age=5`` and an ``ETag``; ``If-None-Match``
  answers 304): the gateway's ``[[cache]]`` demo.

Each change is also sent, best effort and in the background, to the Go
``activity`` service *through the gateway* (``--activity-via``), relaying
the caller's own ``Authorization`` header: the gateway verifies it again and
tells ``activity`` who the user is the same way.

Run: ``python3 examples/todo/todos/app.py --gateway http://127.0.0.1:8090``
(with ``adapters/python/src`` on ``PYTHONPATH`` or the adapter installed).
"""

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import sys
import time
import urllib.request

# The adapter from this checkout when it is not installed.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.join(_HERE, "..", "..", "..", "adapters", "python", "src"))

from forwarding_adapter import run  # noqa: E402

MAX_BODY = 64 * 1024
MAX_TITLE = 500

# user id -> {todo id -> todo}
TODOS = {}
_ids = itertools.count(1)
ACTIVITY_VIA = None


def header(scope, name):
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


async def respond(send, status, body=None, headers=()):
    data = b"" if body is None else json.dumps(body).encode()
    head = [(b"content-type", b"application/json")] if body is not None else []
    head += [(k.encode(), v.encode()) for k, v in headers]
    head.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


def error(code, message):
    """The gateway's error shape, so a client handles one format."""
    return {"error": {"code": code, "message": message}}


async def read_body(receive):
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


def parse_json(raw):
    try:
        v = json.loads(raw or b"null")
    except ValueError as e:
        return None, f"body is not JSON: {e}"
    if not isinstance(v, dict):
        return None, "body must be a JSON object"
    return v, None


def valid_title(t):
    return isinstance(t, str) and 0 < len(t.strip()) <= MAX_TITLE


def stats():
    todos = [t for per_user in TODOS.values() for t in per_user.values()]
    return {
        "users": sum(1 for u in TODOS.values() if u),
        "todos": len(todos),
        "done": sum(1 for t in todos if t["done"]),
        "generated_at": int(time.time()),
    }


def record_activity(scope, action, todo):
    """Tell the activity service, through the gateway, without waiting."""
    auth = header(scope, b"authorization")
    if not ACTIVITY_VIA or not auth:
        return
    body = json.dumps({"action": action, "todo_id": todo["id"], "title": todo["title"]}).encode()

    def post():
        req = urllib.request.Request(
            ACTIVITY_VIA + "/activity",
            data=body,
            method="POST",
            headers={"content-type": "application/json", "authorization": auth},
        )
        try:
            urllib.request.urlopen(req, timeout=2).close()
        except Exception as e:  # best effort: the todo is saved either way
            print(f"activity: {e}", file=sys.stderr)

    asyncio.get_running_loop().run_in_executor(None, post)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    method, path = scope["method"], scope["path"].rstrip("/") or "/"

    if path == "/todos/stats":
        if method != "GET":
            return await respond(send, 405, error("method_not_allowed", "GET only"), [("allow", "GET")])
        body = stats()
        # The ETag covers the counts, not the time they were read at.
        tag = '"%s"' % hashlib.sha256(
            json.dumps({k: body[k] for k in ("users", "todos", "done")}).encode()
        ).hexdigest()[:16]
        cache = [("cache-control", "public, max-age=5"), ("etag", tag)]
        if header(scope, b"if-none-match") == tag:
            await send({"type": "http.response.start", "status": 304,
                        "headers": [(k.encode(), v.encode()) for k, v in cache]})
            return await send({"type": "http.response.body", "body": b""})
        return await respond(send, 200, body, cache)

    user = header(scope, b"x-auth-subject")
    if not user:
        # Only reachable when the gateway's [[auth]] does not cover /todos.
        return await respond(send, 401, error("unauthorized", "no verified user (x-auth-subject)"))
    mine = TODOS.setdefault(user, {})
    private = [("cache-control", "private, no-store")]

    if path == "/todos":
        if method == "GET":
            items = sorted(mine.values(), key=lambda t: t["id"])
            return await respond(send, 200, {"todos": items}, private)
        if method == "POST":
            raw = await read_body(receive)
            if raw is None:
                return await respond(send, 413, error("body_too_large", f"at most {MAX_BODY} bytes"))
            v, problem = parse_json(raw)
            if problem is None and not valid_title(v.get("title")):
                problem = f"title: a non-empty string of at most {MAX_TITLE} characters"
            if problem:
                return await respond(send, 400, error("invalid_request", problem))
            todo = {"id": next(_ids), "title": v["title"].strip(), "done": False,
                    "created_at": int(time.time())}
            mine[todo["id"]] = todo
            record_activity(scope, "created", todo)
            return await respond(send, 201, todo, private + [("location", f"/todos/{todo['id']}")])
        return await respond(send, 405, error("method_not_allowed", "GET or POST"), [("allow", "GET, POST")])

    rest = path[len("/todos/"):] if path.startswith("/todos/") else None
    if rest is None or not rest.isdigit():
        return await respond(send, 404, error("not_found", "no such route"))
    todo = mine.get(int(rest))
    if todo is None:
        return await respond(send, 404, error("not_found", f"no todo {rest}"))
    if method == "GET":
        return await respond(send, 200, todo, private)
    if method == "DELETE":
        del mine[todo["id"]]
        record_activity(scope, "deleted", todo)
        return await respond(send, 204)
    if method in ("PATCH", "PUT"):
        raw = await read_body(receive)
        if raw is None:
            return await respond(send, 413, error("body_too_large", f"at most {MAX_BODY} bytes"))
        v, problem = parse_json(raw)
        if problem is None:
            if "title" in v and not valid_title(v["title"]):
                problem = f"title: a non-empty string of at most {MAX_TITLE} characters"
            elif "done" in v and not isinstance(v["done"], bool):
                problem = "done: true or false"
        if problem:
            return await respond(send, 400, error("invalid_request", problem))
        if "title" in v:
            todo["title"] = v["title"].strip()
        if "done" in v:
            todo["done"] = v["done"]
        record_activity(scope, "completed" if v.get("done") else "updated", todo)
        return await respond(send, 200, todo, private)
    return await respond(send, 405, error("method_not_allowed", "GET, PATCH or DELETE"),
                         [("allow", "GET, PATCH, DELETE")])


def main():
    global ACTIVITY_VIA
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--advertise", default=None,
                   help="host:port the gateway dials (default: the bound address)")
    p.add_argument("--gateway", default=os.environ.get("FORWARDING_GATEWAY", "http://127.0.0.1:8090"),
                   help="registration API; empty: do not register")
    p.add_argument("--activity-via", default="http://127.0.0.1:8081",
                   help="gateway base URL to reach the activity service through; empty: none")
    a = p.parse_args()
    ACTIVITY_VIA = a.activity_via.rstrip("/") or None
    # Every answer is small: unary Send (no stream routes).
    run(app, gateway=a.gateway or None, service="todos", routes=["/todos"], listen=a.listen,
        advertise=a.advertise or "", streaming=False)


if __name__ == "__main__":
    main()
