"""The operator's guides in docs/operations/ are checked against what they describe, so that
they cannot drift from the code: every relative link (and its #anchor) resolves, every `ehds`
command in a shell block parses with the real command line parser, and every block of chart
values validates against the chart's generated values.schema.json.

Conventions the guides follow (docs/operations/README.md says so too): shell commands go in
```sh / ```bash blocks, their output in ```text blocks; a ```yaml block whose first line is
`# values.yaml (node chart)` or `# values.yaml (coordinator chart)` is chart values.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ehds.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "operations"
HELM = ROOT / "deploy" / "helm"
GUIDES = (
    "README.md",
    "install-coordinator.md",
    "onboard-node.md",
    "certificates.md",
    "backup-restore.md",
    "upgrade.md",
    "audit.md",
    "spark.md",
    "monitoring.md",
)
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
VALUES_MARKER = re.compile(r"#\s*values\.yaml\s*\((?P<chart>node|coordinator) chart\)")
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[\w-]*)\s*$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
# Shell operators that end one command (a pipe, a list, a redirection or a subshell).
OPERATORS = frozenset({"|", "||", "&", "&&", ";", "(", ")", "<", ">", ">>", ">&", "<<", "2>"})


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    info: str
    text: str


def _docs() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _blocks(doc: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (indented ones, in lists, included)."""
    blocks: list[Block] = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = len(opening["indent"])
        body: list[str] = []
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            body.append(lines[end][indent:] if lines[end][:indent].isspace() else lines[end])
            end += 1
        blocks.append(Block(doc, index + 1, opening["info"], "\n".join(body)))
        index = end + 1
    return blocks


def _without_fences(doc: Path) -> str:
    text = doc.read_text(encoding="utf-8")
    return re.sub(r"^ *```.*?^ *```", "", text, flags=re.DOTALL | re.MULTILINE)


def _prose(doc: Path) -> str:
    """The Markdown outside code blocks and inline code (where links are links)."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(doc))


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors for the headings of ``doc``: lower case, punctuation dropped, spaces
    turned into hyphens."""
    anchors: set[str] = set()
    for line in _without_fences(doc).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            title = heading[1].strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _links() -> list[tuple[Path, str]]:
    return [(doc, match["target"]) for doc in _docs() for match in LINK.finditer(_prose(doc))]


def _logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined, here-documents' bodies left out."""
    lines: list[str] = []
    pending = ""
    heredoc_end: str | None = None
    for raw in text.splitlines():
        if heredoc_end is not None:
            if raw.strip() == heredoc_end:
                heredoc_end = None
            continue
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if heredoc:
            heredoc_end = heredoc[1]
        lines.append(line.removeprefix("$ "))
    return lines


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _ehds_commands(line: str) -> list[list[str]]:
    """The argv (after `ehds`) of each `ehds` command on a shell line: at the start of a
    command, or after `--` (as in `kubectl exec POD -- ehds ...`)."""
    commands: list[list[str]] = []
    segment: list[str] = []
    for token in [*_tokens(line), ";"]:
        if token not in OPERATORS:
            segment.append(token)
            continue
        if token in {">", ">>", ">&", "<", "<<", "2>"} and segment and segment[-1].isdigit():
            segment.pop()  # the 2 of 2>&1
        for index, word in enumerate(segment):
            if word == "ehds" and (index == 0 or segment[index - 1] == "--"):
                commands.append(segment[index + 1 :])
                break
        segment = []
        if token in {">", ">>", ">&", "<", "<<", "2>"}:
            segment = ["<redirect>"]  # the file name that follows is not a command
    return commands


def _shell_commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for doc in _docs():
        for block in _blocks(doc):
            if block.info not in SHELL_LANGUAGES:
                continue
            for line in _logical_lines(block.text):
                for argv in _ehds_commands(line):
                    found.append((f"{doc.name}:{block.line}: ehds {shlex.join(argv)}", argv))
    return found


def _values_blocks() -> list[tuple[Block, str]]:
    found: list[tuple[Block, str]] = []
    for doc in _docs():
        for block in _blocks(doc):
            first = block.text.lstrip().splitlines()[0] if block.text.strip() else ""
            marker = VALUES_MARKER.fullmatch(first.strip())
            if block.info in {"yaml", "yml"} and marker:
                found.append((block, marker["chart"]))
    return found


def _schema(chart: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((HELM / chart / "values.schema.json").read_text())
    return schema


def test_every_guide_exists_and_the_index_links_it() -> None:
    index = _prose(DOCS / "README.md")
    for name in GUIDES:
        assert (DOCS / name).is_file(), name
        if name != "README.md":
            assert f"]({name})" in index, f"README.md does not link {name}"
    assert "](image.md)" in index


@pytest.mark.parametrize(
    ("doc", "target"), _links(), ids=[f"{doc.name}->{target}" for doc, target in _links()]
)
def test_relative_links_resolve(doc: Path, target: str) -> None:
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
        return
    path_part, _, anchor = target.partition("#")
    destination = (doc.parent / path_part).resolve() if path_part else doc
    assert destination.exists(), f"{doc.name}: link to {target}: {destination} does not exist"
    if anchor and destination.suffix == ".md":
        assert anchor in _anchors(destination), (
            f"{doc.name}: no heading #{anchor} in {destination.name}"
        )


def test_the_guides_hold_commands_and_values() -> None:
    """Guards the checks below against passing on nothing (a renamed fence, a lost marker)."""
    commands = _shell_commands()
    programs = {" ".join(argv[:2]) for _, argv in commands}
    for expected in (
        "pki init",
        "pki issue",
        "pki revoke",
        "pki crl",
        "admin nodes",
        "admin revoke",
        "node policy",
        "audit export",
        "audit verify",
    ):
        assert expected in programs, f"no `ehds {expected}` command in docs/operations"
    charts = [chart for _, chart in _values_blocks()]
    assert charts.count("node") >= 4
    assert charts.count("coordinator") >= 3


@pytest.mark.parametrize(
    ("where", "argv"), _shell_commands(), ids=[where for where, _ in _shell_commands()]
)
def test_ehds_commands_parse(where: str, argv: list[str]) -> None:
    parser = build_parser()
    errors = io.StringIO()
    code: str | int | None = 0
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse's way of refusing (or of printing --help)
            code = exc.code
    assert code == 0, f"{where}\n{errors.getvalue()}"


@pytest.mark.parametrize(
    ("block", "chart"),
    _values_blocks(),
    ids=[f"{block.doc.name}:{block.line}" for block, _ in _values_blocks()],
)
def test_values_blocks_match_the_chart_schema(block: Block, chart: str) -> None:
    values = yaml.safe_load(block.text)
    assert isinstance(values, dict), f"{block.doc.name}:{block.line}: not a mapping"
    validator = jsonschema.Draft202012Validator(_schema(chart))
    problems = [
        f"{'.'.join(str(part) for part in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(values)
    ]
    assert not problems, f"{block.doc.name}:{block.line} ({chart} chart): " + "; ".join(problems)


def test_the_checks_catch_drift() -> None:
    """A misspelt values key, an unknown flag and a broken link are each reported."""
    validator = jsonschema.Draft202012Validator(_schema("node"))
    assert list(validator.iter_errors({"networkPolicy": {"coordinator": {"cidr": []}}}))
    assert not list(validator.iter_errors({"networkPolicy": {"coordinator": {"cidrs": []}}}))
    parser = build_parser()
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        parser.parse_args(["pki", "issue", "node", "fr", "--dir", "pki", "--output", "x"])
    assert _ehds_commands(
        "kubectl -n ehds exec deploy/fr-node -- ehds audit export --config c.yaml > fr.jsonl"
    ) == [["audit", "export", "--config", "c.yaml"]]
    assert _ehds_commands("echo ehds pki init | cat") == []
    assert _ehds_commands("ehds pki crl --dir pki 2>&1 | tee log") == [
        ["pki", "crl", "--dir", "pki"]
    ]
