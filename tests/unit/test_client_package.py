"""clients/notify-client/ is an npm package: an ES module with its types, and no dependencies.

Its declarations are checked against the server in tests/integration/test_client_types.py.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "notify-client"
MANIFEST = json.loads((PACKAGE / "package.json").read_text())
LOCK = json.loads((PACKAGE / "package-lock.json").read_text())


def test_the_package_is_an_es_module_whose_import_comes_with_its_types():
    assert MANIFEST["name"] == "notify-client"
    assert MANIFEST["type"] == "module"
    assert MANIFEST["exports"]["."] == {"types": "./index.d.ts", "import": "./notify-client.js"}
    assert list(MANIFEST["exports"]["."])[0] == "types"  # the condition TypeScript reads first
    assert MANIFEST["types"] == "./index.d.ts"
    assert sorted(MANIFEST["files"]) == ["index.d.ts", "notify-client.js"]
    assert all((PACKAGE / name).is_file() for name in MANIFEST["files"])


def test_the_package_has_no_dependencies_and_pins_typescript_for_its_tests_only():
    assert "dependencies" not in MANIFEST and "peerDependencies" not in MANIFEST
    assert list(MANIFEST["devDependencies"]) == ["typescript"]
    version = MANIFEST["devDependencies"]["typescript"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"pin an exact version, not {version!r}"
    assert LOCK["packages"][""]["devDependencies"] == MANIFEST["devDependencies"]
    assert LOCK["packages"]["node_modules/typescript"]["version"] == version
    assert set(LOCK["packages"]) == {"", "node_modules/typescript"}


def test_the_test_command_installs_the_packages_compiler():
    assert "npm ci --prefix clients/notify-client" in (ROOT / "test.sh").read_text()
