"""libyaml's parser under PyYAML's Python composer (`loader._FastLoader`): the same documents, data
and lines as the pure-Python loader on every YAML file the project ships, and no crash where
libyaml's own C composer would overflow the stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoscaler.config import load_config, loader
from autoscaler.config.loader import SourceDocument, parse_text
from tests.config.conftest import WriteFile

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    p
    for folder in ("policies", "deploy", "benchmarks/scenarios", "autoscaler/sim/scenarios")
    for p in (ROOT / folder).rglob("*.y*ml")
)

needs_libyaml = pytest.mark.skipif(loader._FastLoader is None, reason="PyYAML built without libyaml")


def _lines(node: yaml.Node, path: tuple[object, ...] = ()) -> list[tuple[tuple[object, ...], int, int]]:
    """Every node of a tree with its start line and column, by path."""
    out = [(path, int(node.start_mark.line), int(node.start_mark.column))]
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out += _lines(value, (*path, str(key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _lines(item, (*path, i))
    return out


def _slow(file: str, text: str) -> list[SourceDocument]:
    fast = loader._FastLoader
    loader._FastLoader = None
    try:
        docs, errors = parse_text(file, text)
    finally:
        loader._FastLoader = fast
    assert errors == []
    return docs


def test_shipped_yaml_is_found() -> None:
    assert len(SHIPPED) > 20


@needs_libyaml
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_fast_loader_reads_what_the_python_loader_reads(path: Path) -> None:
    text = path.read_text()
    fast, errors = parse_text(str(path), text)
    assert errors == []
    slow = _slow(str(path), text)
    assert [d.data for d in fast] == [d.data for d in slow]
    assert [_lines(d.node) for d in fast] == [_lines(d.node) for d in slow]
    assert [d.problems for d in fast] == [d.problems for d in slow]


@needs_libyaml
def test_fast_loader_is_used_for_clean_files(monkeypatch: pytest.MonkeyPatch) -> None:
    # A clean file never reaches the pure-Python loader (the slow one is refused here).
    def refuse(*args: object) -> None:
        raise AssertionError("the pure-Python loader ran")

    monkeypatch.setattr(loader, "_Loader", refuse)
    docs, errors = parse_text("x.yaml", "a: 1\n---\nb: [2, {c: 2024-02-30}]\n")
    assert errors == []
    assert [d.data for d in docs] == [{"a": 1}, {"b": [2, {"c": "2024-02-30"}]}]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Balanced and deep: libyaml's C composer would overflow the C stack and kill the process.
        ("[" * 100_000 + "]" * 100_000, "x.yaml:1: yaml: nested too deeply"),
        ("a: 1\na: 2\n", "x.yaml:2: a: duplicate key (first at line 1); only the last one would count"),
        ("a: [1\n", "x.yaml:2: yaml: expected ',' or ']', but got '<stream end>'"),
        ("a: !!int abc\n", "x.yaml:1: yaml: cannot read value"),
        ("a: \x07\n", "x.yaml:1: yaml: unacceptable character #x0007"),
    ],
)
def test_errors_are_reported_as_the_python_loader_reports_them(text: str, expected: str) -> None:
    docs, errors = parse_text("x.yaml", text)
    problems = [str(e) for e in errors] + [str(p) for d in docs for p in d.problems]
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_node_trees_are_composed_only_when_a_line_is_asked_for() -> None:
    text = "a: 1\n---\nb:\n  - 2\n  - {c: 3}\n---\n\nd: &x {e: 4}\nf:\n  <<: *x\n  g: 5\n"
    docs, errors = parse_text("x.yaml", text)
    assert errors == []
    origin = docs[0].origin
    assert all(d.origin is origin for d in docs)
    if loader._FastLoader is not None:
        assert origin._nodes is None  # a clean file keeps its text, not its nodes
    # Any document, in any order, after the first asks: the last one first.
    assert [d.line for d in reversed(docs)] == [8, 3, 1]
    assert docs[1].line_of(("b", 1, "c")) == 5
    assert docs[2].line_of(("f", "e")) == 8  # a merged key: where the anchor wrote it
    assert docs[2].line_of(("f", "g")) == 11
    assert docs[2].line_of(("f", "missing")) == 9  # a missing field: where its parent is


@pytest.mark.parametrize("text", ["0\t", "kind: Nope\t\n", "apiVersion: v0\nkind: ScalingPolicy\t\n"])
def test_a_file_only_libyaml_reads_still_gets_its_lines(text: str, write: WriteFile) -> None:
    # PyYAML's own scanner refuses a tab after a value; libyaml reads it. Lines are then composed
    # by the loader that read the file (a fuzzed "0\t" once crashed asking for them).
    config = load_config([write("p.yaml", text)])
    assert config.errors
    assert all(e.line >= 1 for e in config.errors)
