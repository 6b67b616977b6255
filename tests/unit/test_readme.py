"""The README's configuration table lists every setting the server reads."""

from pathlib import Path

import settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_documents_every_setting_with_its_variable_and_flag():
    for setting in settings.SETTINGS:
        row = f"| `{setting.env}` | `{setting.flag}` |"
        assert any(line.startswith(row) for line in README.splitlines()), row


def test_readme_opens_with_the_run_and_test_commands():
    head = "\n".join(README.splitlines()[:10])
    assert "run.py --demo" in head and "./test.sh" in head
    assert (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text().rstrip().endswith(
        "exec ./test.sh")
