"""A small Hub-compatible HTTP server on loopback: the endpoints huggingface_hub uses to create a
repository and commit files to it. Files arrive as the client sends them and are kept in memory."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELATIONS = ("adapter", "merge", "quantized", "finetune")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def metadata_errors(content: str) -> list[str]:
    """What the Hub checks in a model card's YAML header, for the fields a card here uses."""
    import yaml
    from huggingface_hub.repocard_data import model_index_to_eval_results

    if not content.startswith("---\n"):
        return ["no YAML metadata block"]
    metadata = yaml.safe_load(content.split("---\n", 2)[1]) or {}
    errors = []
    bases = metadata.get("base_model")
    for base in [bases] if isinstance(bases, str) else bases or []:
        if not REPO_ID.match(str(base)):
            errors.append(f"base_model '{base}' is not a repository id")
    if metadata.get("base_model_relation") not in (None, *RELATIONS):
        errors.append(f"base_model_relation must be one of {RELATIONS}")
    if bases is None and metadata.get("base_model_relation"):
        errors.append("base_model_relation needs base_model")
    if "license" in metadata and not isinstance(metadata["license"], str):
        errors.append("license must be a string")
    if "model-index" in metadata:
        try:
            _, results = model_index_to_eval_results(metadata["model-index"])
            if not results:
                errors.append("model-index holds no results")
        except (KeyError, TypeError) as error:
            errors.append(f"model-index is malformed: {error}")
    return errors


class HubState:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id → {"private": bool, "files": {path: bytes}, "commits": [...]}
        self.authorizations: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.validated = 0


def _handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_POST(self):
            state.requests.append(("POST", self.path))
            state.authorizations.append(self.headers.get("Authorization", ""))
            path = self.path.split("?")[0]
            base = f"http://{self.headers['Host']}"
            if path == "/api/validate-yaml":
                errors = metadata_errors(json.loads(self._body())["content"])
                state.validated += 1
                return self._send(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})
            if path == "/api/repos/create":
                request = json.loads(self._body())
                repo_id = (
                    f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
                )
                if repo_id in state.repos:
                    return self._send(409, {"error": "You already created this model repo", "url": f"{base}/{repo_id}"})
                private = request.get("visibility") == "private" or bool(request.get("private"))
                state.repos[repo_id] = {"private": private, "files": {}, "commits": []}
                return self._send(200, {"url": f"{base}/{repo_id}", "name": repo_id})
            match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
            if not match or match.group(1) not in state.repos:
                return self._send(404, {"error": f"not found: {path}"})
            repo_id, action = match.group(1), match.group(2)
            if action == "preupload":
                files = json.loads(self._body())["files"]
                return self._send(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            lines = [json.loads(line) for line in self._body().decode().splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            for line in lines:
                if line["key"] == "file":
                    value = line["value"]
                    state.repos[repo_id]["files"][value["path"]] = base64.b64decode(value["content"])
            oid = hashlib.sha1(json.dumps(header).encode() + str(len(state.repos[repo_id]["commits"])).encode())
            state.repos[repo_id]["commits"].append(header.get("summary"))
            return self._send(
                200, {"commitUrl": f"{base}/{repo_id}/commit/{oid.hexdigest()}", "commitOid": oid.hexdigest()}
            )

        def do_GET(self):
            state.requests.append(("GET", self.path))
            return self._send(404, {"error": f"not found: {self.path}"})

    return Handler


class LocalHub:
    """``with LocalHub() as hub:`` serves on 127.0.0.1 at ``hub.url`` until the block ends."""

    def __enter__(self):
        self.state = HubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
