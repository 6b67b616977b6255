"""A real nginx (Debian's package) configured from deploy/nginx.conf.

The deploy file is used as written; only its listen port and upstream ports
are replaced by loopback test ports. It is included from a minimal main
configuration whose logs, pid and temp files live in a private directory.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from tests.support.processes import ROOT, Child

NGINX = Path("/usr/sbin/nginx")
SITE = ROOT / "deploy" / "nginx.conf"

MAIN = """\
worker_processes 1;
error_log {dir}/error.log notice;
error_log stderr notice;
events {{
    # Two per proxied socket (client and upstream): room for the 300 clients
    # of tests/integration/test_several_processes.py and their reconnects.
    worker_connections 2048;
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/notify-server.conf;
}}
"""


def site_config(listen_port: int, upstream_ports: Sequence[int], log_dir: Path) -> str:
    """deploy/nginx.conf listening on 127.0.0.1:`listen_port`, its upstream
    servers 127.0.0.1:8001, 8002, 8003 moved to `upstream_ports` in order, its
    logs in `log_dir`. Given fewer ports, the deployed lines past them are
    left out (a repeated server would weigh double in least_conn)."""
    text = SITE.read_text().replace("/var/log/nginx/", f"{log_dir}/")
    text, listens = re.subn(r"^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{listen_port};",
                            text, flags=re.M)
    assert listens == 1, "deploy/nginx.conf should have one active `listen 80;`"
    deployed = re.findall(r"^\s*server 127\.0\.0\.1:(\d+)", text, flags=re.M)
    assert deployed == ["8001", "8002", "8003"], deployed
    assert 1 <= len(upstream_ports) <= len(deployed), upstream_ports
    ports = dict(zip(deployed, map(str, upstream_ports)))

    def moved(match: re.Match) -> str:
        port = ports.get(match.group(2))
        return "" if port is None else match.group(1) + port + match.group(3)
    return re.sub(r"^(\s*server 127\.0\.0\.1:)(\d+)(.*\n)", moved, text, flags=re.M)


class Nginx:
    """nginx in the foreground as a child of the test, on 127.0.0.1:`port`."""

    def __init__(self, port: int, upstream_ports: Sequence[int]):
        assert NGINX.exists(), (f"{NGINX} is missing: the proxy tests need Debian's nginx "
                                "package (./test.sh installs it)")
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="notify-nginx-"))
        os.chmod(self.dir, 0o755)  # nginx workers drop root and need to reach their temp dirs
        (self.dir / "notify-server.conf").write_text(site_config(port, upstream_ports, self.dir))
        (self.dir / "nginx.conf").write_text(MAIN.format(dir=self.dir))
        self.child = Child("nginx", [
            str(NGINX), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
            "-e", str(self.dir / "error.log"),
            "-g", f"daemon off; pid {self.dir / 'nginx.pid'};"])
        self.child.wait_for_line(r"start worker process")

    def stop(self) -> int:
        code = self.child.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        return code
