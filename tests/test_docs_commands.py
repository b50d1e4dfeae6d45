"""Every ``pipeline ...`` command shown in the docs parses with the real command line; nothing is run.

The commands are the lines of the fenced shell blocks (```bash, ```sh, ```shell or a bare ```) of
README.md, cluster/README.md and docs/*.md whose command (or a command after ``&&``, ``||``, ``;`` or
``|``) is ``pipeline`` or a path ending in ``/pipeline``. Lines continued with a trailing backslash are
joined first, shell comments are dropped, and ``$(...)``, ``${VAR}`` and ``$VAR`` become a placeholder.
Each command goes through the click command typer builds from ``pipeline.cli.app``, with
``make_context`` only (parsing, type conversion, the options' own callbacks); ``pipeline submit
label|finetune`` also parses the job's own arguments with ``pipeline.submit.validate_job_args``, the parser
submit itself uses. A usage error (an option that does not exist, a value of the wrong type, a missing
argument) fails the test naming the doc file and the line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

try:  # typer 0.29 vendors click as typer._click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - a typer that runs on click itself
    from click.exceptions import UsageError

from pipeline.cli import app
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", ROOT / "cluster" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell"}
PLACEHOLDER = "x"
SEPARATORS = {"&&", "||", ";", "|", "&"}
JOBS = ("label", "finetune")  # what `pipeline submit` forwards


@dataclass(frozen=True)
class DocCommand:
    file: str  # relative to the repository root
    line: int  # where the command starts
    text: str  # the shell line, continuations joined

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def shell_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every logical line in the file's fenced shell blocks."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None  # the open fence's language; None outside a block
    pending: tuple[int, str] | None = None  # a line continued with a backslash
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if fence is None:
            opened = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if opened:
                fence = opened.group(2).lower()
            continue
        if re.match(r"^(`{3,}|~{3,})\s*$", stripped):
            if pending is not None and fence in SHELL_FENCES:
                lines.append(pending)
            fence, pending = None, None
            continue
        if fence not in SHELL_FENCES:
            continue
        start, text = pending if pending is not None else (number, "")
        text = f"{text} {stripped}" if text else stripped
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
            continue
        pending = None
        lines.append((start, text))
    return lines


def without_comment(text: str) -> str:
    """The line up to a ``#`` that starts a shell comment (outside quotes, after whitespace or at the start)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


def substituted(text: str) -> str:
    """``$(...)``, ``${VAR}`` and ``$VAR`` replaced by a placeholder (innermost command substitution first)."""
    while True:
        text, count = re.subn(r"\$\([^()]*\)", PLACEHOLDER, text)
        if not count:
            break
    text = re.sub(r"\$\{[^}]*\}", PLACEHOLDER, text)
    return re.sub(r"\$[A-Za-z_][A-Za-z0-9_]*", PLACEHOLDER, text)


def pipeline_invocations(text: str) -> list[list[str]]:
    """The argument lists (after ``pipeline``) of every pipeline command in one shell line."""
    lexer = shlex.shlex(substituted(without_comment(text)), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    found = []
    for words in segments:
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value pipeline ...
            words = words[1:]
        if words and (words[0] == "pipeline" or words[0].endswith("/pipeline")):
            found.append(words[1:])
    return found


def doc_commands() -> list[DocCommand]:
    commands = []
    for path in DOC_FILES:
        if not path.exists():
            continue
        for number, text in shell_lines(path):
            if pipeline_invocations(text):
                commands.append(DocCommand(str(path.relative_to(ROOT)), number, text))
    return commands


def parse_problem(args: list[str]) -> str | None:
    """Why ``pipeline ARGS`` does not parse, or None when it does. Parses only: no command runs."""
    from pipeline.submit import validate_job_args, with_cluster_address

    command = typer.main.get_command(app)
    path = []
    words = list(args)
    while hasattr(command, "commands"):  # a group: pipeline, pipeline submit, pipeline jobs
        if not words:
            return f"'pipeline {' '.join(path)}' needs a command: one of {', '.join(command.commands)}"
        name = words.pop(0)
        if name not in command.commands:
            return f"'pipeline {' '.join([*path, name])}': no such command; choose one of {', '.join(command.commands)}"
        path.append(name)
        command = command.commands[name]
    try:
        with command.make_context(" ".join(["pipeline", *path]), words) as ctx:
            extra = list(ctx.args)
    except typer.Exit:
        return None if "--help" in words else "exited while parsing"
    except UsageError as err:  # NoSuchOption, BadParameter, MissingParameter, BadOptionUsage, ...
        return err.format_message()
    if path[:1] == ["submit"] and path[1:] and path[1] in JOBS:
        try:
            validate_job_args(path[1], with_cluster_address(path[1], extra))
        except UserError as err:
            return str(err)
    elif extra:
        return f"unexpected arguments: {' '.join(extra)}"
    return None


COMMANDS = doc_commands()


@pytest.fixture(autouse=True)
def _no_ray_address_from_the_environment(monkeypatch):
    """A doc line must name --address itself where a command needs it, whatever this shell has set."""
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)


@pytest.mark.parametrize("doc", COMMANDS, ids=lambda doc: f"{doc.file}:{doc.line}")
def test_every_documented_command_parses(doc):
    problems = [f"'pipeline {shlex.join(args)}': {problem}" for args in pipeline_invocations(doc.text)
                if (problem := parse_problem(args)) is not None]
    assert not problems, f"{doc.file} line {doc.line} does not parse with the real CLI: {'; '.join(problems)}"


def test_the_docs_show_every_command():
    """The README shows each command at least once, and the docs together show many commands."""
    readme = {args[0] + (f" {args[1]}" if args[0] in ("submit", "jobs") and len(args) > 1 else "")
              for doc in COMMANDS if doc.file == "README.md" for args in pipeline_invocations(doc.text) if args}
    wanted = {"models", "classify", "label", "show", "report", "evaluate", "finetune", "submit label", "jobs logs"}
    assert wanted <= readme, f"README.md shows no example of: {sorted(wanted - readme)}"
    assert len(COMMANDS) >= 30, [str(doc) for doc in COMMANDS]
    assert {doc.file for doc in COMMANDS} >= {"README.md", "docs/labeling.md", "docs/cluster.md"}


@pytest.mark.parametrize("line, wrong", [
    ("pipeline label photos/ labels/ --no-such-option", "No such option"),
    ("pipeline label photos/ labels/ --limit N", "--limit"),
    ("pipeline label photos/", "OUTPUT"),
    ("pipeline finetune data/ models/x --augment mirror", "--augment"),
    ("pipeline submit label s3://b/in/ s3://b/out/ --no-such-option --address http://HEAD:8265", "No such option"),
    ("pipeline submit finetune s3://b/train/ s3://b/model/ --resume --overwrite --address http://HEAD:8265",
     "--overwrite"),
    ("pipeline jobs list", "--address"),
    ("pipeline labels photos/ labels/", "no such command"),
])
def test_the_check_finds_wrong_commands(line, wrong):
    [args] = pipeline_invocations(line)
    problem = parse_problem(args)
    assert problem is not None and wrong.lower() in problem.lower(), problem


def test_shell_lines_are_read_as_a_shell_would():
    text = ('.venv/bin/pip install -e . && .venv/bin/pipeline label "$(.venv/bin/python -m pipeline.samples)" '
            "out --overwrite && .venv/bin/pipeline show out   # the demo")
    assert pipeline_invocations(text) == [["label", PLACEHOLDER, "out", "--overwrite"], ["show", "out"]]
    assert pipeline_invocations("PIPELINE_S3_READER=s3fs pipeline show $OUT --errors") == [["show", PLACEHOLDER, "--errors"]]
    assert pipeline_invocations("pipeline show 'a #b' # comment") == [["show", "a #b"]]
    assert pipeline_invocations("ray job submit -- python jobs/label.py in out") == []
