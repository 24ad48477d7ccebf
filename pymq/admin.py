"""The HTTP admin server (placeholder; see issue 5)."""

import http.server
import json
import threading


class AdminServer:
    def __init__(self, source, host: str, port: int, token: str | None):
        src = source

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/health":
                    ok, details = src.health()
                    body, code = {"status": "ok" if ok else "unhealthy", **details}, 200 if ok else 503
                elif self.path == "/stats":
                    body, code = src.stats(), 200
                else:
                    body, code = {"error": "not found"}, 404
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
