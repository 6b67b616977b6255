"""The README and the protocol reference: what they promise matches the tree.

The README's configuration table is the one rendered from the settings, it
opens with the commands a newcomer runs, every relative link in it and in
docs/protocol.md leads to a file a fresh clone has, the protocol quotes the
emitter's script as it is, and no code or document cites the external contract.
"""

import re
import subprocess
from pathlib import Path

import settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PROTOCOL = ROOT / "docs" / "protocol.md"

FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
# [text](target) and ![alt](target), with an optional "title"; and [label]: target definitions.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=[\"']([^\"']+)[\"']", re.IGNORECASE)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)

# Where code and docs live: they cite docs/protocol.md, never the external contract that a
# clone does not have (`../shared/PROTOCOL.md`, cited as "PROTOCOL.md section N").
CITING_PLACES = ("README.md", "docs", "notify_server", "handlers", "clients")
STALE_REFERENCE = "PROTOCOL.md"  # case-sensitive: docs/protocol.md does not match


def readme_config_table() -> str:
    """The README's table that starts with the configuration table's header, as written."""
    lines = README.splitlines(keepends=True)
    header = settings.config_table().splitlines(keepends=True)[0]
    start = lines.index(header) if header in lines else len(lines)
    end = next((number for number in range(start, len(lines))
                if not lines[number].startswith("|")), len(lines))
    return "".join(lines[start:end])


def test_readme_configuration_table_is_the_one_rendered_from_the_settings():
    assert readme_config_table() == settings.config_table(), (
        "README.md's configuration table differs from the settings' declarations; paste in "
        'the output of: python -c "import settings; print(settings.config_table())"')


def test_readme_opens_with_run_then_dashboard_then_test_command():
    head = README.splitlines()[:15]

    def first(predicate, what):
        found = [number for number, line in enumerate(head) if predicate(line)]
        assert found, f"{what} is not in the README's first {len(head)} lines"
        return found[0]

    run = first(lambda line: line.strip().endswith(".venv/bin/python run.py --demo"),
                "the install-and-run command")
    dashboard = first(lambda line: line.startswith("Then open the dashboard at"),
                      "'Then open the dashboard at ...'")
    test = first(lambda line: line.strip() == "./test.sh", "the test command")
    assert run < dashboard < test
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec ./test.sh")


def test_readme_spells_the_demo_command_one_way():
    spellings = set(re.findall(r"([\w./-]*python[\w.]*) run\.py --demo", README))
    assert spellings == {".venv/bin/python"}, spellings


def relative_links(markdown: str) -> list:
    """Targets of the Markdown and HTML links and images outside code, without
    external URLs, mailto: and same-page anchors."""
    prose = CODE_SPAN.sub("", FENCED_BLOCK.sub("", markdown))
    targets = (INLINE_LINK.findall(prose) + LINK_DEFINITION.findall(prose)
               + HTML_LINK.findall(prose))
    return [target for target in targets if not EXTERNAL.match(target)]


def git_ignored(path: Path) -> bool:
    """True when git would leave `path` out of a commit (so a clone lacks it)."""
    try:
        result = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(path)],
                                capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def test_relative_links_extraction_skips_code_external_urls_and_anchors():
    markdown = ("[a](docs/a.md#part) ![b](img/b.png \"title\") [c](https://example.com/c)\n"
                "[d](#local) [e](mailto:x@example.com) `[f](not/a/link.md)`\n"
                "```\n[g](inside/a/block.md)\n```\n[h]: ../up.md\n<img src=\"pic.png\">\n")
    assert relative_links(markdown) == ["docs/a.md#part", "img/b.png", "../up.md", "pic.png"]


def test_every_relative_link_in_the_readme_and_protocol_resolves_to_a_file_in_the_repository():
    assert PROTOCOL.is_file(), "docs/protocol.md is missing"
    broken = []
    for document in (ROOT / "README.md", PROTOCOL):
        for target in relative_links(document.read_text()):
            path = target.split("#", 1)[0].split("?", 1)[0]
            resolved = (document.parent / path).resolve()
            inside = resolved == ROOT or ROOT in resolved.parents
            if not inside or not resolved.is_file() or git_ignored(resolved):
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert broken == [], broken


def citing_files() -> list:
    files = sorted(ROOT.glob("*.py"))
    for place in CITING_PLACES:
        path = ROOT / place
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(item for item in path.rglob("*")
                                if item.is_file() and "__pycache__" not in item.parts
                                and "node_modules" not in item.parts
                                and item.suffix in (".py", ".md", ".js", ".ts", ".html", ".css")))
    return files


def test_no_file_cites_the_external_protocol_document():
    citing = []
    for path in citing_files():
        text = path.read_text(errors="replace")
        citing.extend(f"{path.relative_to(ROOT)}:{number}"
                      for number, line in enumerate(text.splitlines(), 1)
                      if STALE_REFERENCE in line)
    assert citing == [], ("cite docs/protocol.md instead of the external contract: "
                          f"{citing}")


def test_protocol_quotes_the_emitters_lua_script_exactly():
    from notify_server.worker.emitter import EMIT_SCRIPT

    blocks = re.findall(r"^```lua\n(.*?)^```", PROTOCOL.read_text(), re.MULTILINE | re.DOTALL)
    assert blocks and all(block.strip() == EMIT_SCRIPT.strip() for block in blocks)
