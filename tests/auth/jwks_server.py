"""A JWKS endpoint on loopback that serves whatever a file holds at the moment it is asked.

A test rotates an issuer's keys by rewriting the file; the gateway sees the
new set the next time it fetches; a file that is not a JWKS is served as it
is (an identity provider answering garbage), and a missing file is answered
500 (an identity provider that is down behind its load balancer).

    python tests/auth/jwks_server.py PORT JWKS_FILE
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def serve(port: int, jwks_file: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/jwks.json":
                self.send_error(404)
                return
            try:
                body = jwks_file.read_bytes()
            except FileNotFoundError:
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"JWKS running on http://127.0.0.1:{server.server_port}", flush=True)  # how a test learns port 0's port
    server.serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]))
