"""
README.rst's commands, as a newcomer copies them into a fresh shell after
its install line: each names an executable that exists once installed.
The install puts the commands in ``.venv/bin`` without activating it, so a
bare ``rustorium`` or ``twistd`` would be "command not found".
"""

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.rst"
BIN = Path(sys.executable).parent
"""Where the install being tested put its commands (``.venv/bin``)."""
SHELL_LANGUAGES = {"shell", "console", "bash", "sh"}
INSTALLED = {"rustorium", "twistd", "twist", "trial", "pytest", "ruff", "pip", "pip3", "python"}
"""Commands only the virtual environment has (Debian has no bare python)."""
ACTIVATE = re.compile(r"^(\.|source) \.venv/bin/activate$")


def literal_blocks(text: str) -> list[tuple[str | None, str]]:
    """
    The literal blocks of a reStructuredText document, in order, each with
    its language (``.. code-block:: shell``) or C{None} (after ``::``).
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = re.match(r"\s*\.\. code-block::\s*(\S+)", line)
        if directive or line.rstrip().endswith("::"):
            language = directive.group(1) if directive else None
            indent = len(line) - len(line.lstrip())
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip()
                                      or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i])
                i += 1
            blocks.append((language, "\n".join(body).strip("\n")))
            continue
        i += 1
    return blocks


def shell_commands(block: str) -> list[list[str]]:
    """
    The simple commands of a shell block: continuation lines joined,
    comments dropped, split at ``&&``, ``||``, ``;`` and ``|``, and
    leading ``NAME=value`` assignments left out.
    """
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|", "&"):
                while command and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
                    command.pop(0)
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(token)
    return commands


def problem(command: list[str], activated: bool) -> str | None:
    """
    Why C{command} fails in a fresh shell in the checkout after the
    install line, or C{None}.
    """
    name = command[0]
    if name.startswith(".venv/bin/"):
        if not (BIN / name.removeprefix(".venv/bin/")).exists():
            return f"{name}: the install makes no such command"
    elif "/" in name:
        if not (ROOT / name).exists():
            return f"{name}: no such file in the checkout"
    elif name in INSTALLED:
        if not activated:
            return f"{name}: not on PATH unless .venv is activated; write .venv/bin/{name}"
        if not (BIN / name).exists():
            return f"{name}: the install makes no such command"
    elif name == "python3" and command[1:3] != ["-m", "venv"]:
        return "python3: the system's Python lacks the dependencies; write .venv/bin/python"
    return None


def test_literal_blocks():
    """
    The parser finds shell blocks and plain ones, and their text.
    """
    text = (
        "Run::\n\n    a b\n    c\n\nText.\n\n.. code-block:: shell\n\n"
        "    x \\\n        y\n\nEnd.\n"
    )
    assert literal_blocks(text) == [(None, "    a b\n    c"), ("shell", "    x \\\n        y")]


def test_shell_commands():
    assert shell_commands(
        "python3 -m venv .venv && .venv/bin/pip install '.[t]'  # why\n"
        "$ A=1 rustorium listen x | jq -r '.a' ; b \\\n    --c"
    ) == [["python3", "-m", "venv", ".venv"], [".venv/bin/pip", "install", ".[t]"],
          ["rustorium", "listen", "x"], ["jq", "-r", ".a"], ["b", "--c"]]


@pytest.mark.parametrize("command, activated, found", [
    ("rustorium listen x", False, "not on PATH"),
    ("twistd -n rustorium", False, "not on PATH"),
    ("python bench/run.py", False, "not on PATH"),
    ("python3 bench/run.py", False, "system's Python"),
    (".venv/bin/no-such-thing", False, "no such command"),
    ("rustorium listen x", True, None),
    (".venv/bin/twistd -n rustorium", False, None),
    ("python3 -m venv .venv", False, None),
    ("conformance/run.sh", False, None),
])
def test_problems_found(command, activated, found):
    """
    What the README check refuses, and what it lets through.
    """
    (words,) = shell_commands(command)
    result = problem(words, activated)
    assert (result is None) if found is None else (found in result), result


def test_readme_commands_run_in_a_fresh_shell():
    """
    Every command in README.rst's shell blocks names an executable that
    the install line makes (``.venv/bin/...``), a file of the checkout, or
    a system command; ``rustorium``, ``twistd``, ``pytest`` and the like
    appear bare only after the README has activated the environment.
    Literal blocks that are not marked as shell hold no such commands, so
    none escapes the check.
    """
    activated = False
    problems = []
    checked = 0
    for language, block in literal_blocks(README.read_text()):
        if language not in SHELL_LANGUAGES:
            for line in block.splitlines():
                words = line.strip().removeprefix("$ ").split()
                if words[1:2] == ["="]:
                    continue  # Python: rustorium = makeService(...)
                if words and (words[0] in INSTALLED or words[0].startswith(".venv/")):
                    problems.append(f"a command outside a shell block: {line.strip()}")
            continue
        for command in shell_commands(block):
            if ACTIVATE.match(shlex.join(command)):
                activated = True
                continue
            checked += 1
            found = problem(command, activated)
            if found:
                problems.append(f"{found}  [{shlex.join(command)}]")
    assert problems == []
    assert checked >= 8, "the README's shell blocks were not found"
