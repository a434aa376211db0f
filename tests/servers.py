"""Local servers that the real clients talk to, counting every request and every body byte they send.

- `HubServer`: the handful of Hugging Face Hub endpoints huggingface_hub calls (revision info, tree
  listing, resolve with HEAD and Range), answered from model folders on disk; set as HF_ENDPOINT.
- `CountingMotoServer`: moto's own S3 server (moto.server.ThreadedMotoServer) behind a counting WSGI
  wrapper; s3fs reaches it through AWS_ENDPOINT_URL.
Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class RequestLog:
    """(method, path, status, body bytes, Range header) of every request a server answered."""

    def __init__(self):
        self._lock = threading.Lock()
        self.entries: list[tuple[str, str, int, int, str]] = []

    def add(self, method: str, path: str, status: int, size: int, byte_range: str | None) -> None:
        with self._lock:
            self.entries.append((method, path, status, size, byte_range or ""))

    def reset(self) -> None:
        with self._lock:
            self.entries = []

    @property
    def requests(self) -> int:
        return len(self.entries)

    @property
    def bytes(self) -> int:
        return sum(entry[3] for entry in self.entries)


# -- the Hub ------------------------------------------------------------------------------------


class HubRepo:
    def __init__(self, folder: str, commit: str, gated: bool):
        self.files: dict[str, bytes] = {}
        for root, dirs, names in os.walk(folder):
            dirs[:] = [name for name in dirs if name != "analysis"]
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    self.files[os.path.relpath(path, folder).replace(os.sep, "/")] = handle.read()
        self.commit = commit
        self.gated = gated

    def entry(self, path: str) -> dict:
        data = self.files[path]
        entry = {"type": "file", "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                 "size": len(data), "path": path}
        if path.endswith(".safetensors"):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def etag(self, path: str) -> str:
        entry = self.entry(path)
        return entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]


class HubServer:
    def __init__(self):
        self.repos: dict[str, HubRepo] = {}
        self.log = RequestLog()
        self.ignore_ranges = False  # answer like a server that does not serve byte ranges
        self._server: ThreadingHTTPServer | None = None

    def add_repo(self, repo_id: str, folder: str, gated: bool = False) -> str:
        """Serve `folder` as `repo_id` (revision "main"); returns its commit."""
        digest = hashlib.sha1(repo_id.encode())
        for root, _, names in sorted(os.walk(folder)):
            for name in sorted(names):
                with open(os.path.join(root, name), "rb") as handle:
                    digest.update(name.encode() + handle.read())
        self.repos[repo_id] = HubRepo(folder, digest.hexdigest(), gated)
        return self.repos[repo_id].commit

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        hub = self

        class Handler(_HubHandler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, *args):  # quiet
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # a client that stopped reading (ignore_ranges)
            pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        parts = [unquote(part) for part in urlsplit(self.path).path.strip("/").split("/")]
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                repo = self._repo(parts[2] + "/" + parts[3], parts[5], files=False)
                if parts[4] == "revision":
                    body = {"id": parts[2] + "/" + parts[3], "sha": repo.commit, "private": False,
                            "gated": "manual" if repo.gated else False,
                            "siblings": [{"rfilename": path} for path in sorted(repo.files)]}
                else:
                    body = self._tree(repo, "/".join(parts[6:]), "recursive=true" in self.path.lower())
                return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo = self._repo(parts[0] + "/" + parts[1], parts[3])
                return self._file(repo, "/".join(parts[4:]), head)
            return self._send(404, b"not found", {}, head)
        except _HubError as error:
            return self._send(error.status, error.code.encode(), {"X-Error-Code": error.code}, head)

    def _repo(self, repo_id: str, revision: str, files: bool = True) -> HubRepo:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            raise _HubError(401, "RepoNotFound")
        # As on the Hub, a gated repo's metadata and file list are public; its files are not.
        if files and repo.gated and "authorization" not in {key.lower() for key in self.headers}:
            raise _HubError(401, "GatedRepo")
        if revision not in ("main", repo.commit):
            raise _HubError(404, "RevisionNotFound")
        return repo

    def _tree(self, repo: HubRepo, folder: str, recursive: bool) -> list[dict]:
        prefix = folder + "/" if folder else ""
        entries, folders = [], set()
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            entries.append(repo.entry(path))
        return [{"type": "directory", "oid": "0" * 40, "path": path} for path in sorted(folders)] + entries

    def _file(self, repo: HubRepo, path: str, head: bool) -> None:
        if path not in repo.files:
            raise _HubError(404, "EntryNotFound")
        data = repo.files[path]
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.etag(path)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if head or not match or self.server_hub.ignore_ranges:
            return self._send(200, data, headers, head)
        start = int(match.group(1))
        end = min(int(match.group(2)) + 1 if match.group(2) else len(data), len(data))
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        return self._send(206, data[start:end], headers, head)

    def _send(self, status: int, body: bytes, headers: dict, head: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.server_hub.log.add(self.command, self.path, status, 0 if head else len(body), self.headers.get("Range"))


class _HubError(Exception):
    def __init__(self, status: int, code: str):
        super().__init__(code)
        self.status = status
        self.code = code


# -- S3 -----------------------------------------------------------------------------------------


def counting_moto_server():
    """moto's ThreadedMotoServer on 127.0.0.1 (a free port), its WSGI app wrapped to count requests
    and response body bytes into `.log`."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    log = RequestLog()

    def counted(app):
        def wrapper(environ, start_response):
            status = []

            def remember(code, headers, *args):
                status.append(int(code.split()[0]))
                return start_response(code, headers, *args)

            size = 0
            for chunk in app(environ, remember):
                size += len(chunk)
                yield chunk
            log.add(environ["REQUEST_METHOD"], environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", ""),
                    status[0] if status else 0, size, environ.get("HTTP_RANGE"))

        return wrapper

    class Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            from moto.moto_server.threaded_moto_server import MotoRequestHandler

            app = counted(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.log = log
    return server
