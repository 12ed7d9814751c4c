"""Every `digits …` command the README, the RUNBOOK and streams/README show parses as written.

The docs are run by hand in a fresh clone before a release; this keeps the commonest way they
go wrong out between those runs: an option or subcommand the CLI does not have (`unrecognized
arguments`, as `digits redis-cli --scan` once was). Placeholders (`<entry id>`) and command
substitutions stand for one argument; an inline command with `…` in it is an outline, not run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from handwriting_ai.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "ops/RUNBOOK.md", "streams/README.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PLACEHOLDER = re.compile(r"<[^<>\n]+>|\$\([^()]*\)|\$\{[^}]*\}|\$[A-Z_]+|\b[A-Z]\b")
INLINE = re.compile(r"`((?:\./dev run |[A-Z_]+=\S+ )*digits [^`]+)`")
SEPARATORS = {"&&", "||", "|", ";", ">", ">>", "2>&1", "&"}


def _shell_lines(text: str) -> list[str]:
    lines: list[str] = []
    for lang, body in FENCE.findall(text):
        if lang not in ("", "sh", "bash", "shell", "console"):
            continue
        joined = body.replace("\\\n", " ")
        lines.extend(line.strip() for line in joined.splitlines() if line.strip())
    return lines


def _digits_commands(line: str) -> list[list[str]]:
    tokens = shlex.split(PLACEHOLDER.sub("1", line), comments=True)
    commands: list[list[str]] = []
    current: list[str] = []
    for token in [*tokens, ";"]:
        if token in SEPARATORS:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    found = []
    for command in commands:
        while command and re.match(r"^[A-Z_][A-Z0-9_]*=", command[0]):  # VAR=value prefixes
            command = command[1:]
        if command[:2] == ["./dev", "run"]:
            command = command[2:]
        if command and command[0] in ("digits", ".venv/bin/digits"):
            found.append(command[1:])
    return found


def _all() -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        # Inline, a command is one given with options (prose names commands bare).
        spans = INLINE.findall(FENCE.sub("", text))
        inline = [m for m in spans if " -" in m and "…" not in m]
        for line in [*_shell_lines(text), *inline]:
            out.extend((f"{doc}: {line}", args) for args in _digits_commands(line))
    return out


COMMANDS = _all()


def test_the_docs_show_the_commands_operators_need() -> None:
    shown = {args[0] for _, args in COMMANDS if args}
    assert {"up", "worker", "models", "redis-cli", "watch", "read"} <= shown, shown


@pytest.mark.parametrize(("where", "args"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_each_command_parses(where: str, args: list[str]) -> None:
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code == 0:  # --help
            return
        pytest.fail(f"{where}\n  -> argparse refused {args} (exit {exc.code})")
