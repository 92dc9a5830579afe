"""A loopback stand-in for the Hugging Face Hub API, enough for ``mae_trainer.hub.push_to_hub``.

It serves the requests ``huggingface_hub`` (2.x, ``HfApi``) makes for create repo → create branch →
create commit, with the JSON shapes the client parses:

* ``POST /api/repos/create`` – ``{"name", "organization", "visibility"?, "type"?}``; 409 when it exists
  (the client's ``exist_ok`` path).
* ``GET /api/{type}s/{ns}/{name}[/revision/{rev}]`` – repo info (``create_repo(exist_ok=True)`` calls it
  after a 401/403, ``create_commit`` after an empty commit).
* ``POST /api/{type}s/{ns}/{name}/branch/{branch}`` – ``{"startingPoint"?}``; 409 when it exists.
* ``POST /api/validate-yaml`` – ``{"content", "repoType"}``; ``create_commit`` sends every README.md here.
* ``POST /api/{type}s/{ns}/{name}/preupload/{rev}`` – answers ``"uploadMode": "regular"`` for every file,
  so the client never starts an LFS/Xet upload and sends the bytes base64-encoded in the commit.
* ``POST /api/{type}s/{ns}/{name}/commit/{rev}`` – NDJSON: a ``header`` line, then ``file`` lines
  (``{"path", "content", "encoding": "base64"}``) and deletions; answers ``{"commitUrl", "commitOid"}``.

Anything else answers 404 and is listed in ``unhandled``. Every request is recorded (method, path, query,
Authorization, JSON body). Bounded: request bodies up to ``max_body`` bytes, at most ``max_requests``
requests, a socket timeout per connection; ``stop()`` (or leaving the ``with`` block) shuts it down.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_NAMESPACE = "loopback-user"
_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("GET", re.compile(_REPO + r"(?:/revision/(?P<rev>[^/]+))?"), "repo_info"),
    ("POST", re.compile(_REPO + r"/branch/(?P<rev>[^/]+)"), "create_branch"),
    ("POST", re.compile(_REPO + r"/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(_REPO + r"/commit/(?P<rev>[^/]+)"), "commit"),
]


@dataclass
class Request:
    method: str
    path: str  # unquoted, without the query string
    query: dict[str, list[str]]
    authorization: str | None
    content_type: str | None
    json: object = None  # the parsed body of JSON requests
    body_bytes: int = 0
    status: int | None = None


@dataclass
class Branch:
    head: str
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, Branch] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # {"oid", "branch", "summary", "paths"}


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _oid(*parts: object) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()


class LoopbackHub:
    """Start with ``with LoopbackHub() as hub:`` (or ``start()``/``stop()``); ``hub.url`` is the endpoint.

    ``tokens``: accepted bearer tokens (``None`` accepts any non-empty one). Write requests without an
    accepted token get 401, as on the Hub."""

    def __init__(
        self,
        *,
        tokens: set[str] | None = None,
        max_requests: int = 200,
        max_body: int = 256 * 2**20,
        timeout: float = 30.0,
    ):
        self.tokens = tokens
        self.max_requests = max_requests
        self.max_body = max_body
        self.timeout = timeout
        self.requests: list[Request] = []
        self.unhandled: list[Request] = []
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LoopbackHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        Handler.timeout = self.timeout
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ inspection

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[repo_id].branches[revision].files)

    def requests_to(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # ------------------------------------------------------------------ endpoints (called under self.lock)

    def _authorize(self, request: Request) -> str:
        auth = request.authorization or ""
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        if not token or (self.tokens is not None and token not in self.tokens):
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _repo(self, match: re.Match, request: Request, write: bool) -> Repo:
        repo = self.repos.get(unquote(match["repo"]))
        authorized = True
        try:
            self._authorize(request)
        except HubError:
            if write:
                raise
            authorized = False
        if repo is None or repo.repo_type != match["type"][:-1] or (repo.private and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _branch(repo: Repo, revision: str) -> Branch:
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.branches[revision]

    def create_repo(self, match, request, body):
        self._authorize(request)
        payload = json.loads(body or b"{}")
        if not isinstance(payload, dict) or not payload.get("name"):
            raise HubError(400, "name is required")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or DEFAULT_NAMESPACE}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.url}/{prefix}{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": f"You already created this {repo_type} repo", "url": url}
        repo = Repo(repo_id, repo_type, private=payload.get("visibility") == "private")
        oid = _oid(repo_id, "initial commit")
        repo.branches["main"] = Branch(head=oid)
        repo.commits.append({"oid": oid, "branch": "main", "summary": "initial commit", "paths": []})
        self.repos[repo_id] = repo
        return 200, {"url": url, "name": repo_id, "id": oid[:24]}

    def validate_yaml(self, match, request, body):
        import yaml

        content = json.loads(body or b"{}").get("content", "")
        front = re.match(r"^---\s*\n(.*?\n)---\s*\n", content, re.DOTALL)
        if front is None:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            metadata = yaml.safe_load(front[1])
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def repo_info(self, match, request, body):
        repo = self._repo(match, request, write=False)
        branch = self._branch(repo, unquote(match["rev"] or "main"))
        return 200, {
            "id": repo.repo_id,
            "sha": branch.head,
            "private": repo.private,
            "siblings": [
                {"rfilename": path, "size": len(data)} for path, data in sorted(branch.files.items())
            ],
        }

    def create_branch(self, match, request, body):
        repo = self._repo(match, request, write=True)
        name = unquote(match["rev"])
        if name in repo.branches:
            return 409, {"error": f"Reference already exists: refs/heads/{name}"}
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        source = self._branch(repo, start)
        repo.branches[name] = Branch(head=source.head, files=dict(source.files))
        return 200, {}

    def preupload(self, match, request, body):
        repo = self._repo(match, request, write=True)
        self._branch(repo, unquote(match["rev"]))
        files = json.loads(body or b"{}").get("files", [])
        return 200, {
            "files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in files
            ],
            "commitOid": repo.branches[unquote(match["rev"])].head,
        }

    def commit(self, match, request, body):
        repo = self._repo(match, request, write=True)
        revision = unquote(match["rev"])
        branch = self._branch(repo, revision)
        if "create_pr" in request.query:
            raise HubError(400, "loopback hub: pull requests are not supported")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first NDJSON line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, branch.head):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(branch.files)
        paths = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                content = value["content"]
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[value["path"]] = data
                paths.append(value["path"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            elif key == "lfsFile":
                raise HubError(422, "loopback hub stores inline (regular) files only; got an LFS pointer")
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        oid = _oid(branch.head, header.get("summary"), sorted(paths))
        branch.files, branch.head = files, oid
        repo.commits.append(
            {"oid": oid, "branch": revision, "summary": header.get("summary"), "paths": paths}
        )
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return 200, {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.url}/{prefix}{repo.repo_id}/commit/{oid}",
            "pullRequestUrl": None,
        }


class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    server_version = "LoopbackHub/1.0"

    def log_message(self, format, *args):  # quiet
        pass

    def _read_body(self) -> bytes:
        limit = self.hub.max_body
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline(64).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers
                        pass
                    return b"".join(chunks)
                total += size
                if total > limit:
                    raise HubError(413, f"request body over {limit} bytes")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise HubError(413, f"request body over {limit} bytes")
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=unquote(split.path),
            query=parse_qs(split.query),
            authorization=self.headers.get("Authorization"),
            content_type=self.headers.get("Content-Type"),
        )
        with hub.lock:
            hub.requests.append(request)
            over = len(hub.requests) > hub.max_requests
        try:
            if over:
                raise HubError(429, f"loopback hub: more than {hub.max_requests} requests")
            body = self._read_body()
            request.body_bytes = len(body)
            if (request.content_type or "").startswith("application/json") and body:
                try:
                    request.json = json.loads(body)
                except ValueError:
                    raise HubError(400, "body is not JSON") from None
            for method, pattern, name in _ROUTES:
                match = pattern.fullmatch(split.path)
                if match and method == self.command:
                    with hub.lock:
                        status, payload = getattr(hub, name)(match, request, body)
                    break
            else:
                with hub.lock:
                    hub.unhandled.append(request)
                raise HubError(404, f"loopback hub: no route for {self.command} {split.path}")
            request.status = status
            self._reply(status, payload)
        except HubError as err:
            request.status = err.status
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._reply(err.status, {"error": err.message}, headers)
        except (ValueError, KeyError, TypeError) as err:
            request.status = 400
            self._reply(400, {"error": f"bad request: {err}"}, {"X-Error-Message": "bad request"})

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()
