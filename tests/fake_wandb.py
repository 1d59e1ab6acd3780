"""A W&B server on 127.0.0.1 that answers what ``wandb sync`` asks, records what arrives, answers
what ``cnnlab sync`` asks afterwards (each run's files, its artifacts' states), and can reject
every artifact or fail every artifact file's upload (to test that ``cnnlab sync`` notices)."""

import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeWandb:
    """What arrived: ``runs`` (names upserted), ``history`` (run → history lines received),
    ``artifacts`` (names committed), ``uploads`` (file names PUT), ``run_files`` (run → file
    names that arrived), ``operations`` and their ``variables``."""

    def __init__(self, fail_artifacts: bool = False, fail_uploads: bool = False) -> None:
        self.fail_artifacts = fail_artifacts
        self.fail_uploads = fail_uploads  # artifact files' PUT: HTTP 500 (W&B retries for minutes)
        self.runs: set[str] = set()
        self.history: dict[str, int] = {}
        self.artifacts: list[str] = []
        self.uploads: list[str] = []
        self.run_files: dict[str, set[str]] = {}
        self.operations: list[str] = []
        self.variables: list[tuple[str, Any]] = []
        self.url = ""
        self._lock = threading.Lock()
        self._made: dict[str, dict[str, Any]] = {}  # artifact id → run, name, digest, files, state

    def answer(self, op: str, variables: dict[str, Any]) -> dict[str, Any] | None:
        """The GraphQL ``data`` for ``op``; None: an error answer."""
        inp = variables.get("input") or {}
        if op == "ServerFeaturesQuery":
            return {"serverInfo": {"features": []}}
        if op == "UpsertBucket":
            self.runs.add(variables["name"])
            return {"upsertBucket": {"inserted": True, "bucket": {
                "id": f"run-{variables['name']}", "name": variables["name"], "displayName": "run",
                "description": "", "config": "{}", "sweepName": None, "historyLineCount": 0,
                "project": {"id": "p", "name": variables.get("project") or "cnnlab",
                            "entity": {"id": "e", "name": "tester"}}}}}
        if op.startswith(("CreateArtifact", "CommitArtifact", "UpdateArtifact", "UseArtifact",
                          "LinkArtifact")) and self.fail_artifacts:
            return None
        if op == "CreateArtifact":
            aid = f"art{len(self._made)}"
            self._made[aid] = {"run": inp.get("runName"), "digest": inp.get("digest"),
                               "name": inp.get("artifactCollectionName", "?"), "files": set(),
                               "arrived": set(), "state": "PENDING"}
            return {"createArtifact": {"artifact": {"id": aid, "state": "PENDING",
                                                    "artifactSequence": {"latestArtifact": None}}}}
        if op == "CreateArtifactManifest":
            return {"createArtifactManifest": {"artifactManifest": {"id": "m", "file": {
                "id": "f", "displayName": "wandb_manifest.json", "uploadUrl": f"{self.url}/up/manifest",
                "uploadHeaders": []}}}}
        if op == "CreateArtifactFiles":
            files = inp.get("artifactFiles") or []
            for f in files:
                self._made[f.get("artifactID")]["files"].add(f.get("name"))
            return {"createArtifactFiles": {"files": {"edges": [{"node": {
                "id": f"file{i}", "name": f.get("name"), "displayName": f.get("name"),
                "uploadUrl": f"{self.url}/up/artifact/{f.get('artifactID')}/{f.get('name')}",
                "uploadHeaders": [], "storagePath": f.get("name"), "uploadMultipartUrls": None,
                "artifact": {"id": f.get("artifactID")}}} for i, f in enumerate(files)]}}}
        if op == "CommitArtifact":
            aid = variables.get("artifactID")
            made = self._made[aid]
            if made["files"] - made["arrived"]:  # as W&B: no commit before every file arrived
                return None
            made["state"] = "COMMITTED"
            self.artifacts.append(made["name"])
            return {"commitArtifact": {"artifact": {"id": aid, "digest": made["digest"]}}}
        if op == "CreateRunFiles":
            run = variables.get("run")
            return {"createRunFiles": {"runID": "r", "uploadHeaders": [], "files": [
                {"name": name, "uploadUrl": f"{self.url}/up/run/{run}/{name}"}
                for name in variables.get("files", [])]}}
        if op == "CnnlabSyncCheck":
            run = variables.get("run")
            if run not in self.runs:
                return {"project": {"run": None}}
            return {"project": {"run": {
                "files": {"edges": [{"node": {"name": n}} for n in sorted(self.run_files.get(run, ()))]},
                "outputArtifacts": {"edges": [{"node": {
                    "state": a["state"], "digest": a["digest"], "fileCount": str(len(a["files"])),
                    "artifactSequence": {"name": a["name"]}}}
                    for a in self._made.values() if a["run"] == run]}}}}
        return {}

    def put(self, path: str) -> bool:
        """A file arrives at ``/up/...``; False: refused (``fail_uploads``)."""
        kind, _, rest = path.removeprefix("/up/").partition("/")
        owner, _, name = rest.partition("/")
        if kind == "artifact":
            if self.fail_uploads:
                return False
            self._made[owner]["arrived"].add(name)
        elif kind == "run":
            self.run_files.setdefault(owner, set()).add(name)
        self.uploads.append(path.rsplit("/", 1)[-1])
        return True

    @contextmanager
    def serving(self) -> Iterator["FakeWandb"]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self._body()
                if self.path.endswith("/file_stream"):
                    run = self.path.split("/")[-2]
                    lines = json.loads(body or b"{}").get("files", {}).get("wandb-history.jsonl", {})
                    with fake._lock:
                        fake.history[run] = fake.history.get(run, 0) + len(lines.get("content", []))
                    self._reply(200, {"exitcode": None, "limits": {}})
                    return
                if not self.path.startswith("/graphql"):  # W&B's own telemetry (OTel)
                    self._reply(200, {})
                    return
                query = json.loads(body or b"{}")
                op = query.get("operationName") or ""
                with fake._lock:
                    fake.operations.append(op)
                    fake.variables.append((op, query.get("variables")))
                    data = fake.answer(op, query.get("variables") or {})
                if data is None:
                    self._reply(400, {"errors": [{"message": f"{op}: artifacts are rejected here"}]})
                else:
                    self._reply(200, {"data": data})

            def do_PUT(self) -> None:  # noqa: N802
                self._body()
                with fake._lock:
                    arrived = fake.put(self.path)
                self._reply(200 if arrived else 500, {} if arrived else {"error": "storage down"})

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
