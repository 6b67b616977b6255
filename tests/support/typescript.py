"""The TypeScript compiler, run on sources as a project that installed notify-client would be.

`tsc` is the one pinned in clients/notify-client/package-lock.json (`npm ci
--prefix clients/notify-client`, which ./test.sh runs). It is never skipped: a
machine without it, or without Node.js, fails the test that needs it.
"""

import json
import subprocess
from pathlib import Path
from typing import Dict

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "notify-client"
TSC = CLIENT_DIR / "node_modules" / ".bin" / "tsc"

# Strict, and stricter than `strict` where a server shape could hide: an
# optional key may be absent but is never `undefined` on the wire.
TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "exactOptionalPropertyTypes": True,
        "noEmit": True,
        "target": "es2022",
        "module": "nodenext",
        "moduleResolution": "nodenext",
        "lib": ["es2022", "dom"],
        "types": [],
    },
    "include": ["*.ts"],
}


def typecheck(directory: Path, sources: Dict[str, str]) -> str:
    """Compile `sources` (file name to TypeScript) in `directory`, where
    `import ... from 'notify-client'` resolves to the package directory as an
    install would (`node_modules/notify-client`, through its `exports`), with
    `tsc --noEmit --strict`. Returns tsc's diagnostics: '' when it compiled."""
    if not TSC.is_file():
        pytest.fail(f"{TSC.relative_to(ROOT)} is missing: run "
                    "`npm ci --prefix clients/notify-client` (./test.sh does)")
    modules = directory / "node_modules"
    modules.mkdir(exist_ok=True)
    link = modules / "notify-client"
    if not link.exists():
        link.symlink_to(CLIENT_DIR, target_is_directory=True)
    (directory / "package.json").write_text('{"private": true, "type": "module"}\n')
    (directory / "tsconfig.json").write_text(json.dumps(TSCONFIG, indent=2))
    for name, text in sources.items():
        (directory / name).write_text(text)
    try:
        result = subprocess.run([str(TSC), "-p", str(directory), "--noEmit", "--strict",
                                 "--pretty", "false"],
                                cwd=directory, capture_output=True, text=True, timeout=120)
    except OSError as exc:  # tsc is a Node.js script: no `node` on PATH
        pytest.fail(f"cannot run tsc ({exc}); the client tests need Node.js on PATH")
    if result.returncode == 0:
        return ""
    return (result.stdout + result.stderr).strip() or f"tsc exited with {result.returncode}"
