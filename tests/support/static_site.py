"""A static file server on its own loopback port: a web page of another origin.

Browser tests load a page from here and have it talk to the notify server on a
different port, which makes every request from it cross-origin.
"""

import functools
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


class _QuietFiles(SimpleHTTPRequestHandler):
    # Module scripts must come with a JavaScript type, whatever /etc/mime.types says.
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}

    def log_message(self, format, *args) -> None:
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve the files under `root` on 127.0.0.1 with an ephemeral port.

    Yields the site's origin, e.g. ``http://127.0.0.1:41234`` (no trailing
    slash: the value a browser sends as `Origin`). Requests are answered on
    a background thread until the block exits, which stops the server.
    """
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="static-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
