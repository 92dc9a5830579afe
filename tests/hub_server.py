"""A loopback stand-in for the Hugging Face Hub, enough for ``mae_trainer.hub.push_to_hub`` (upload) and for
``from_pretrained`` / ``snapshot_download`` by repo id (download), both through the real ``huggingface_hub``.

Upload (``huggingface_hub`` 2.x, ``HfApi``: create repo → create branch → create commit):

* ``POST /api/repos/create`` – ``{"name", "organization", "visibility"?, "type"?}``; 409 when it exists
  (the client's ``exist_ok`` path). A new repo's first commit holds the Hub's default ``.gitattributes``.
* ``GET /api/{type}s/{ns}/{name}[/revision/{rev}]`` – repo info: ``sha``, ``siblings`` (with ``lfs``).
* ``POST /api/{type}s/{ns}/{name}/branch/{branch}`` – ``{"startingPoint"?}``; 409 when it exists.
* ``POST /api/validate-yaml`` – ``{"content", "repoType"}``; ``create_commit`` sends every README.md here.
* ``POST /api/{type}s/{ns}/{name}/preupload/{rev}`` – answers ``"uploadMode": "lfs"`` for files the branch's
  ``.gitattributes`` sends to LFS (``*.safetensors filter=lfs ...``) and for files of 10 MB or more, as the
  Hub does; ``"regular"`` for the rest (their bytes then travel base64-encoded in the commit).
* ``POST /{repo}.git/info/lfs/objects/batch`` – the git-LFS batch API (``operation: upload``): an ``upload``
  action with a pre-signed URL (basic transfer: one ``PUT``; files over ``multipart_size``: a
  ``chunk_size`` and one URL per part, each ``PUT`` answering an ``ETag``, then a completion ``POST`` of
  ``{"oid", "parts"}``) and a ``verify`` action; objects already stored get no actions.
* ``POST /{repo}.git/info/lfs/objects/verify`` – 200 when the object arrived with that size.
* ``POST /api/{type}s/{ns}/{name}/commit/{rev}`` – NDJSON: a ``header`` line, then ``file`` lines
  (base64), ``lfsFile`` lines (``{"path", "algo": "sha256", "oid", "size"}``, refused unless that object
  was uploaded) and deletions; answers ``{"commitUrl", "commitOid"}``.
* ``POST /api/{type}s/{ns}/{name}/xet-write-token/{rev}`` – 501: this server does not implement Xet
  storage. ``huggingface_hub`` uploads through Xet whenever ``hf_xet`` is installed, so tests set
  ``HF_HUB_DISABLE_XET=1`` and the client takes the LFS path above.

Download (``hf_hub_download``, which ``from_pretrained`` uses):

* ``GET /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]`` – the file list (``snapshot_download``), one page.
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` – ``X-Repo-Commit``; a regular file answers 200 with its git
  blob ``ETag``; an LFS file redirects (302) to its object with ``X-Linked-Etag`` (the sha256) and
  ``X-Linked-Size``, as the Hub redirects to its CDN; a missing file is 404 ``EntryNotFound``.
* ``HEAD``/``GET /lfs-objects/{oid}`` on ``cdn_url`` (a second origin, as the Hub's CDN is) – the bytes.
* ``Range: bytes=...`` on both (``HfFileSystem``, which ``datasets``' streaming reads through, fetches parts
  of files): 206 with ``Content-Range``.
* ``GET /api/agent-harnesses`` – the client's telemetry registry (empty).

Anything else answers 404 and is listed in ``unhandled``. Every request is recorded (method, path, query,
Authorization, JSON body). Bounded: request bodies up to ``max_body`` bytes, at most ``max_requests``
requests, a socket timeout per connection; ``stop()`` (or leaving the ``with`` block) shuts it down.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_NAMESPACE = "loopback-user"
LFS_THRESHOLD = 10 * 1000 * 1000  # the Hub stores files of 10 MB or more in LFS whatever .gitattributes says
# The .gitattributes the Hub commits into every new model repo (its LFS patterns).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy "
        "*.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* "
        "*.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
    ).split()
)
_API_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_GIT_REPO = r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("GET", re.compile(_API_REPO + r"(?:/revision/(?P<rev>[^/]+))?"), "repo_info"),
    ("GET", re.compile(_API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), "tree"),
    ("POST", re.compile(_API_REPO + r"/branch/(?P<rev>[^/]+)"), "create_branch"),
    ("POST", re.compile(_API_REPO + r"/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(_API_REPO + r"/commit/(?P<rev>[^/]+)"), "commit"),
    ("POST", re.compile(_API_REPO + r"/xet-write-token/(?P<rev>[^/]+)"), "xet_token"),
    ("GET", re.compile(_API_REPO + r"/xet-write-token/(?P<rev>[^/]+)"), "xet_token"),
    ("POST", re.compile(_GIT_REPO + r"\.git/info/lfs/objects/batch"), "lfs_batch"),
    ("POST", re.compile(_GIT_REPO + r"\.git/info/lfs/objects/verify"), "lfs_verify"),
    ("PUT", re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})"), "lfs_put"),
    ("PUT", re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})/part/(?P<part>\d+)"), "lfs_put_part"),
    ("POST", re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})"), "lfs_complete"),
    ("GET", re.compile(r"/lfs-objects/(?P<oid>[0-9a-f]{64})"), "lfs_object"),
    ("HEAD", re.compile(r"/lfs-objects/(?P<oid>[0-9a-f]{64})"), "lfs_object"),
    ("GET", re.compile(r"/api/agent-harnesses"), "agent_harnesses"),
    ("HEAD", re.compile(_GIT_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
    ("GET", re.compile(_GIT_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
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
    range: str | None = None  # the Range header (streaming readers fetch parts of a file)


@dataclass
class Raw:
    """A reply that is not JSON: ``body`` bytes (not sent for HEAD) and extra headers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/octet-stream"


@dataclass
class Branch:
    head: str
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: dict[str, str] = field(default_factory=dict)  # path → sha256 of the files stored in LFS


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, Branch] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # {"oid", "branch", "summary", "paths"}
    snapshots: dict[str, Branch] = field(default_factory=dict)  # commit oid → the tree it made


def _ranged(request: Request, data: bytes, headers: dict[str, str]) -> Raw:
    """The whole file (200), or the part a ``Range: bytes=START-[END]`` / ``bytes=-SUFFIX`` header asks
    for (206 with ``Content-Range``; 416 past the end), as the Hub's CDN answers ``HfFileSystem``."""
    headers = headers | {"Accept-Ranges": "bytes"}
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", request.range or "")
    if match is None or not any(match.groups()):
        return Raw(200, data, headers)
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), len(data) - 1) if last else len(data) - 1
    else:
        start, end = max(0, len(data) - int(last)), len(data) - 1
    if start >= len(data) or start > end:
        return Raw(416, b"", headers | {"Content-Range": f"bytes */{len(data)}"})
    return Raw(206, data[start : end + 1], headers | {"Content-Range": f"bytes {start}-{end}/{len(data)}"})


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_patterns(gitattributes: str) -> list[str]:
    """The patterns a ``.gitattributes`` text sends to LFS (``PATTERN ... filter=lfs ...``)."""
    patterns = []
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) > 1 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def matches_lfs(path: str, patterns: list[str]) -> bool:
    """git's rule, as far as the Hub's defaults need it: a pattern without ``/`` matches the base name."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else name, p.replace("**/", "*")) for p in patterns)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


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
        multipart_size: int = 64 * 2**20,
    ):
        """``multipart_size``: LFS objects larger than this are uploaded in parts of this size (the Hub
        switches to multipart for large files)."""
        self.tokens = tokens
        self.multipart_size = multipart_size
        self.lfs_objects: dict[str, bytes] = {}  # sha256 → bytes, stored once the upload is complete
        self._parts: dict[str, dict[int, bytes]] = {}  # multipart uploads in progress
        self._signatures: dict[str, str] = {}  # sha256 → the secret of its pre-signed upload URLs
        self.max_requests = max_requests
        self.max_body = max_body
        self.timeout = timeout
        self.requests: list[Request] = []
        self.unhandled: list[Request] = []
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LoopbackHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        Handler.timeout = self.timeout
        # a second origin plays the CDN that the Hub redirects LFS downloads to (the client follows only
        # redirects that stay on the Hub's origin; metadata comes from the redirect itself otherwise)
        self._servers = []
        for _ in range(2):
            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.daemon_threads = True
            server.block_on_close = False
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
            thread.daemon = True
            thread.start()
            self._servers.append((server, thread))
        self._server = self._servers[0][0]
        return self

    def stop(self) -> None:
        for server, thread in getattr(self, "_servers", []):
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
        self._servers, self._server = [], None

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_url(self) -> str:
        host, port = self._servers[1][0].server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ inspection

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[repo_id].branches[revision].files)

    def lfs_paths(self, repo_id: str, revision: str = "main") -> dict[str, str]:
        """Path → sha256 of the files the branch stores in LFS."""
        with self.lock:
            return dict(self.repos[repo_id].branches[revision].lfs)

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

    @staticmethod
    def _tree(repo: Repo, revision: str) -> Branch:
        """A branch, or the tree of a commit (downloads pin the commit they resolved first)."""
        tree = repo.branches.get(revision) or repo.snapshots.get(revision)
        if tree is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return tree

    @staticmethod
    def _record(repo: Repo, branch: Branch, revision: str, oid: str, summary: str, paths: list[str]) -> None:
        branch.head = oid
        repo.snapshots[oid] = Branch(head=oid, files=dict(branch.files), lfs=dict(branch.lfs))
        repo.commits.append({"oid": oid, "branch": revision, "summary": summary, "paths": paths})

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
        main = repo.branches["main"] = Branch(
            head="", files={".gitattributes": DEFAULT_GITATTRIBUTES.encode()}
        )
        oid = _oid(repo_id, "initial commit")
        self._record(repo, main, "main", oid, "initial commit", [".gitattributes"])
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
        tree = self._tree(repo, unquote(match["rev"] or "main"))
        siblings = []
        for path, data in sorted(tree.files.items()):
            sibling = {"rfilename": path, "size": len(data), "blobId": _git_blob_sha(data)}
            if path in tree.lfs:
                sibling["lfs"] = {"sha256": tree.lfs[path], "size": len(data), "pointerSize": 134}
            siblings.append(sibling)
        return 200, {"id": repo.repo_id, "sha": tree.head, "private": repo.private, "siblings": siblings}

    def tree(self, match, request, body):
        """``list_repo_tree`` (``snapshot_download`` lists the files to fetch with it): one page."""
        repo = self._repo(match, request, write=False)
        tree = self._tree(repo, unquote(match["rev"]))
        base = unquote(match["path"] or "").strip("/")
        recursive = request.query.get("recursive", ["false"])[0] == "true"
        entries, folders = [], set()
        for path, data in sorted(tree.files.items()):
            if base and not path.startswith(base + "/"):
                continue
            rest = path[len(base) + 1 :] if base else path
            if "/" in rest and not recursive:
                folders.add(f"{base}/{rest.split('/')[0]}" if base else rest.split("/")[0])
                continue
            parts = path.split("/")[:-1]
            folders.update(
                "/".join(parts[: i + 1]) for i in range(len(base.split("/")) if base else 0, len(parts))
            )
            entry = {"type": "file", "oid": _git_blob_sha(data), "size": len(data), "path": path}
            if path in tree.lfs:
                entry["lfs"] = {"oid": tree.lfs[path], "size": len(data), "pointerSize": 134}
            entries.append(entry)
        entries += [
            {"type": "directory", "oid": _oid(tree.head, f), "size": 0, "path": f} for f in sorted(folders)
        ]
        return 200, entries

    def create_branch(self, match, request, body):
        repo = self._repo(match, request, write=True)
        name = unquote(match["rev"])
        if name in repo.branches:
            return 409, {"error": f"Reference already exists: refs/heads/{name}"}
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        source = self._branch(repo, start)
        repo.branches[name] = Branch(head=source.head, files=dict(source.files), lfs=dict(source.lfs))
        return 200, {}

    def preupload(self, match, request, body):
        repo = self._repo(match, request, write=True)
        branch = self._branch(repo, unquote(match["rev"]))
        files = json.loads(body or b"{}").get("files", [])
        patterns = lfs_patterns(branch.files.get(".gitattributes", b"").decode(errors="replace"))
        answers = []
        for f in files:
            lfs = int(f["size"]) >= LFS_THRESHOLD or matches_lfs(f["path"], patterns)
            answers.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": None,
                }
            )
        return 200, {"files": answers, "commitOid": branch.head}

    def agent_harnesses(self, match, request, body):
        return 200, {"standardEnvVars": [], "harnesses": {}}  # the client's telemetry registry: empty

    def xet_token(self, match, request, body):
        self._repo(match, request, write=True)
        raise HubError(501, "loopback hub: Xet storage is not implemented; set HF_HUB_DISABLE_XET=1 (LFS)")

    # LFS: batch → PUT (one, or parts + completion) → verify; objects land in self.lfs_objects

    def lfs_batch(self, match, request, body):
        match_type = match["type"] or "models"
        repo = self.repos.get(unquote(match["repo"]))
        self._authorize(request)
        if repo is None or repo.repo_type != match_type[:-1]:
            raise HubError(404, "Repository not found", "RepoNotFound")
        payload = json.loads(body or b"{}")
        if payload.get("operation") != "upload" or payload.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, "loopback hub: only sha256 uploads are supported")
        transfers = payload.get("transfers") or ["basic"]
        objects = []
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        for obj in payload.get("objects", []):
            oid, size = str(obj["oid"]), int(obj["size"])
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "bad oid"}})
                continue
            entry = {"oid": oid, "size": size, "authenticated": True}
            if self.lfs_objects.get(oid) is None or len(self.lfs_objects[oid]) != size:
                signature = self._signatures.setdefault(oid, secrets.token_hex(8))
                upload = {"href": f"{self.url}/lfs-upload/{oid}?sig={signature}&size={size}"}
                if size > self.multipart_size and "multipart" in transfers:
                    count = -(-size // self.multipart_size)
                    upload["header"] = {"chunk_size": str(self.multipart_size)} | {
                        str(n): f"{self.url}/lfs-upload/{oid}/part/{n}?sig={signature}"
                        for n in range(1, count + 1)
                    }
                verify = {"href": f"{self.url}/{prefix}{repo.repo_id}.git/info/lfs/objects/verify"}
                entry["actions"] = {"upload": upload, "verify": verify}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def _check_signature(self, oid: str, request: Request) -> None:
        if request.query.get("sig", [None])[0] != self._signatures.get(oid):
            raise HubError(403, "loopback hub: upload URL signature does not match")

    def _store(self, oid: str, data: bytes, size: int | None) -> None:
        if size is not None and len(data) != size:
            raise HubError(400, f"loopback hub: object {oid} has {len(data)} bytes, announced {size}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"loopback hub: content does not hash to {oid}")
        self.lfs_objects[oid] = data

    def lfs_put(self, match, request, body):
        self._check_signature(match["oid"], request)
        size = request.query.get("size", [None])[0]
        self._store(match["oid"], body, int(size) if size is not None else None)
        return Raw(200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def lfs_put_part(self, match, request, body):
        self._check_signature(match["oid"], request)
        self._parts.setdefault(match["oid"], {})[int(match["part"])] = body
        return Raw(200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def lfs_complete(self, match, request, body):
        oid = match["oid"]
        self._check_signature(oid, request)
        payload = json.loads(body or b"{}")
        parts = self._parts.get(oid, {})
        listed = payload.get("parts", [])
        if payload.get("oid") != oid or [p["partNumber"] for p in listed] != list(range(1, len(parts) + 1)):
            raise HubError(400, "loopback hub: completion does not list every uploaded part in order")
        for part in listed:
            if part["etag"] != f'"{hashlib.md5(parts[part["partNumber"]]).hexdigest()}"':
                raise HubError(400, f"loopback hub: etag of part {part['partNumber']} does not match")
        self._store(oid, b"".join(parts[n] for n in sorted(parts)), None)
        del self._parts[oid]
        return 200, {}

    def lfs_verify(self, match, request, body):
        self._authorize(request)
        payload = json.loads(body or b"{}")
        data = self.lfs_objects.get(payload.get("oid"))
        if data is None or len(data) != payload.get("size"):
            raise HubError(404, "loopback hub: object not uploaded")
        return 200, {}

    def lfs_object(self, match, request, body):
        data = self.lfs_objects.get(match["oid"])
        if data is None:
            raise HubError(404, "no such object")
        return _ranged(request, data, {"ETag": f'"{match["oid"]}"'})

    def resolve(self, match, request, body):
        match_type = match["type"] or "models"
        repo = self.repos.get(unquote(match["repo"]))
        authorized = True
        try:
            self._authorize(request)
        except HubError:
            authorized = False
        if repo is None or repo.repo_type != match_type[:-1] or (repo.private and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        tree = self._tree(repo, unquote(match["rev"]))
        path = unquote(match["path"])
        headers = {"X-Repo-Commit": tree.head}
        if path not in tree.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)
        data = tree.files[path]
        if path in tree.lfs:
            oid = tree.lfs[path]
            headers |= {
                "Location": f"{self.cdn_url}/lfs-objects/{oid}",
                "X-Linked-Etag": f'"{oid}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{oid}"',
            }
            return Raw(302, headers=headers)
        return _ranged(request, data, headers | {"ETag": f'"{_git_blob_sha(data)}"'})

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
        files, lfs = dict(branch.files), dict(branch.lfs)
        paths = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                content = value["content"]
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[value["path"]] = data
                lfs.pop(value["path"], None)
                paths.append(value["path"])
            elif key == "deletedFile":
                lfs.pop(value["path"], None)
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
                    lfs.pop(path, None)
            elif key == "lfsFile":
                oid = value.get("oid")
                if value.get("algo", "sha256") != "sha256" or oid not in self.lfs_objects:
                    raise HubError(422, f"LFS object {oid} of {value.get('path')} was never uploaded")
                if "size" in value and int(value["size"]) != len(self.lfs_objects[oid]):
                    raise HubError(422, f"LFS object {oid}: size {value['size']} does not match")
                files[value["path"]] = self.lfs_objects[oid]
                lfs[value["path"]] = oid
                paths.append(value["path"])
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        oid = _oid(branch.head, header.get("summary"), sorted(paths))
        branch.files, branch.lfs = files, lfs
        self._record(repo, branch, revision, oid, header.get("summary"), paths)
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
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
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
            range=self.headers.get("Range"),
        )
        with hub.lock:
            hub.requests.append(request)
            over = len(hub.requests) > hub.max_requests
        try:
            if over:
                raise HubError(429, f"loopback hub: more than {hub.max_requests} requests")
            body = self._read_body()
            request.body_bytes = len(body)
            json_types = ("application/json", "application/vnd.git-lfs+json")
            if (request.content_type or "").split(";")[0].strip() in json_types and body:
                try:
                    request.json = json.loads(body)
                except ValueError:
                    raise HubError(400, "body is not JSON") from None
            for method, pattern, name in _ROUTES:
                match = pattern.fullmatch(split.path)
                if match and method == self.command:
                    with hub.lock:
                        result = getattr(hub, name)(match, request, body)
                    status, payload = (result, None) if isinstance(result, Raw) else result
                    break
            else:
                with hub.lock:
                    hub.unhandled.append(request)
                raise HubError(404, f"loopback hub: no route for {self.command} {split.path}")
            if isinstance(status, Raw):
                request.status = status.status
                self._send(status.status, status.body, status.content_type, status.headers)
            else:
                request.status = status
                self._reply(status, payload)
        except HubError as err:
            request.status = err.status
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._reply(err.status, {"error": err.message}, headers)
        except (ValueError, KeyError, TypeError) as err:
            request.status = 400
            self._reply(400, {"error": f"bad request: {err}"}, {"X-Error-Message": "bad request"})

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()
