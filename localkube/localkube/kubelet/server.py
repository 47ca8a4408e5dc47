"""The kubelet's HTTPS endpoint, reduced to container logs.

The API server serves `pods/log` (kubectl logs, client libraries) by calling
`https://<node InternalIP>:<kubeletEndpoint port>/containerLogs/<ns>/<pod>/<container>`.
Without a client certificate configured for kubelets it sends none and does not
verify our serving certificate, so a self-signed one is enough here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# (namespace, pod, container) -> (log file, "is the container still running?"), or None.
LogLookup = Callable[[str, str, str], tuple[Path, Callable[[], bool]] | None]

FOLLOW_POLL_SECONDS = 0.2


def write_self_signed(cert: Path, key: Path, ip: str, common_name: str) -> None:
    """A throwaway serving certificate for `ip` (ECDSA P-256, one week)."""
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)


def tail_bytes(data: bytes, lines: int | None, limit: int | None) -> bytes:
    """The last `lines` lines, then at most `limit` bytes (as the kubelet applies them)."""
    if lines is not None:
        data = b"".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else b""
    if limit is not None:
        data = data[:limit]
    return data


class LogServer:
    """Serves /containerLogs/... over HTTPS on `host`; the kernel picks the port."""

    def __init__(self, host: str, cert_dir: Path, lookup: LogLookup, node_name: str) -> None:
        cert_dir.mkdir(parents=True, exist_ok=True)
        cert, key = cert_dir / "kubelet.crt", cert_dir / "kubelet.key"
        write_self_signed(cert, key, host, f"system:node:{node_name}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        handler = _handler_for(lookup)
        self._server = ThreadingHTTPServer((host, 0), handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name=f"{node_name}-logs"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(lookup: LogLookup) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # the API server logs its requests; stay quiet

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            found = lookup(*parts[1:4]) if len(parts) == 4 and parts[0] == "containerLogs" else None
            if found is None:
                self.send_error(404, "container not found")
                return
            path, running = found
            query = urllib.parse.parse_qs(url.query)
            lines = int(query["tailLines"][0]) if "tailLines" in query else None
            limit = int(query["limitBytes"][0]) if "limitBytes" in query else None
            follow = query.get("follow", ["false"])[0] == "true"
            data = path.read_bytes() if path.exists() else b""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if not follow:
                body = tail_bytes(data, lines, limit)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.end_headers()
            self._follow(path, tail_bytes(data, lines, None), len(data), running)

        def _follow(
            self, path: Path, first: bytes, offset: int, running: Callable[[], bool]
        ) -> None:
            try:
                self.wfile.write(first)
                self.wfile.flush()
                while True:
                    alive = running()
                    with path.open("rb") as src:
                        src.seek(offset)
                        chunk = src.read()
                    if chunk:
                        offset += len(chunk)
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    elif not alive:
                        return
                    time.sleep(FOLLOW_POLL_SECONDS)
            except (OSError, ssl.SSLError):
                return  # the client went away

    return Handler
