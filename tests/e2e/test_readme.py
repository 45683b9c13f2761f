"""The README stays true: every environment variable the code reads is documented, every command it shows
exists, every local link and the screenshot are there. (No Label Studio needed.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.settings import Settings
from training.pipeline.settings import ENV_NAMES

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# Read by the code, but not samloop settings.
NOT_SETTINGS = {"PYTHONPATH"}
ENV_READ = re.compile(r"""environ(?:\.get)?[(\[]\s*["']([A-Z][A-Z0-9_]+)["']""")


def _readme() -> str:
    return README.read_text()


def _config_table() -> str:
    text = _readme()
    start = text.index("## Configuration")
    return text[start : text.index("\n## ", start + 1)]


def _documented(name: str, text: str) -> bool:
    return re.search(rf"`{name}`", text) is not None


def test_every_setting_and_job_variable_is_in_the_configuration_table() -> None:
    table = _config_table()
    names = set(Settings.model_fields) | set(ENV_NAMES)
    missing = sorted(n for n in names if not _documented(n, table))
    assert not missing, f"README's configuration table lacks {missing}"


def test_every_environment_variable_read_in_backend_and_training_is_documented() -> None:
    table = _config_table()
    read = set()
    for folder in ("backend", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            read |= set(ENV_READ.findall(path.read_text()))
    assert read, "found no environment reads: the pattern is broken"
    missing = sorted(n for n in read - NOT_SETTINGS if not _documented(n, table))
    assert not missing, f"read from the environment but not in README's configuration table: {missing}"


def test_test_suite_variables_named_in_the_readme_exist() -> None:
    named = set(re.findall(r"`(SAMLOOP_(?:LS_VENV|E2E_[A-Z_]+|UPDATE_SCREENSHOT))", _readme()))
    assert named
    sources = "".join(p.read_text() for p in (ROOT / "tests" / "e2e").glob("*.py"))
    assert not [n for n in named if n not in sources]


def test_make_targets_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    text = _readme()
    code = re.findall(r"```.*?```", text, flags=re.S) + re.findall(r"`[^`\n]+`", text)
    used = {target for snippet in code for target in re.findall(r"\bmake ([a-z][a-z-]*)", snippet)}
    assert used and not (used - targets), f"README uses make targets the Makefile lacks: {sorted(used - targets)}"


def test_cli_commands_and_options_in_the_readme_exist() -> None:
    from training.cli import build_parser

    parser = build_parser()
    lines = re.findall(r"python -m training [a-z]+[^\n`]*", _readme())
    assert lines
    for line in lines:
        argv = re.sub(r"\[|\]|#.*", " ", line).split()[3:]
        if "--help" in argv:  # the command exists: its help exits 0
            with pytest.raises(SystemExit) as exc:
                parser.parse_args([argv[0], "--help"])
            assert exc.value.code == 0, f"README's `{line.strip()}` fails"
        else:  # the README's own example parses: the command and every option it shows exist
            parser.parse_args(argv)

def _heading_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("target", sorted(set(re.findall(r"\]\(((?!https?:|#)[^)]+)\)", README.read_text()))))
def test_local_links_exist(target: str) -> None:
    path, _, anchor = target.partition("#")
    assert (ROOT / path).exists(), f"README links to {path}, which does not exist"
    if anchor:
        headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), flags=re.MULTILINE)
        assert anchor in {_heading_anchor(h) for h in headings}, f"README links to {target}: no such heading"


def test_screenshot_is_a_png() -> None:
    shot = ROOT / "docs" / "label-studio-samloop.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
