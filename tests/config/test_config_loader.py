"""The YAML layer: paths and files, line numbers, and the translation of pydantic's errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from autoscaler.config import ConfigError, load_config
from autoscaler.config.loader import (
    MAX_DOCUMENTS,
    MAX_FILE_BYTES,
    SourceDocument,
    did_you_mean,
    format_path,
    parse_text,
    read_file,
)

# The `write` fixture of conftest.py: (file name, YAML text) -> path.
WriteFile = Callable[[str, str], Path]

MINIMAL = """
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: demo, namespace: ml}
spec:
  pools:
    - {deployment: demo-a100, nodeClass: regular, gpuType: A100}
  triggers:
    - {name: backlog, type: rabbitmq, queue: jobs}
"""


@pytest.mark.parametrize(
    ("path", "text"),
    [
        # names joined with dots, list indexes in brackets
        (("spec", "pools", 1, "gpuType"), "spec.pools[1].gpuType"),
        # a map key that is not a plain name is quoted, so the path stays unambiguous
        (("spec", "clusters", 0, "gpuTypes", "A100.80gb"), 'spec.clusters[0].gpuTypes["A100.80gb"]'),
        # the empty path is the document itself
        ((), "document"),
    ],
)
def test_format_path(path: tuple[str | int, ...], text: str) -> None:
    assert format_path(path) == text


@pytest.mark.parametrize(
    ("word", "hint"),
    [
        # a one-letter typo
        ("gpuTyp", "; did you mean 'gpuType'?"),
        # the right word in the wrong case
        ("gputype", "; did you mean 'gpuType'?"),
        # nothing close
        ("zzz", ""),
        # not a string at all
        (3, ""),
    ],
)
def test_did_you_mean(word: object, hint: str) -> None:
    assert did_you_mean(word, ["gpuType", "nodeClass", "deployment"]) == hint


def test_config_error_str_is_file_line_field_message() -> None:
    assert (
        str(ConfigError("a.yaml", 3, "spec.pools", "must not be empty"))
        == "a.yaml:3: spec.pools: must not be empty"
    )


def _document(text: str) -> SourceDocument:
    docs, errors = parse_text("x.yaml", text)
    assert errors == []
    return docs[0]


@pytest.mark.parametrize(
    ("path", "line"),
    [
        # a key of a block mapping: the line of the key
        (("spec", "pools"), 3),
        # a list item in flow style: the line it starts on
        (("spec", "pools", 1), 5),
        # a key inside a flow mapping that spans two lines
        (("spec", "pools", 1, "gpuType"), 6),
        # a missing field: the line of its nearest existing parent
        (("spec", "pools", 1, "provider"), 5),
        # an index past the end: the list
        (("spec", "pools", 7, "gpuType"), 3),
        # nothing of the path exists: the document's first line
        (("status",), 1),
    ],
)
def test_line_of(path: tuple[str | int, ...], line: int) -> None:
    doc = _document(
        "kind: ScalingPolicy\n"
        "spec:\n"
        "  pools:\n"
        "    - {deployment: a, gpuType: A100}\n"
        "    - {deployment: b,\n"
        "       gpuType: L4}\n"
    )
    assert doc.line_of(path) == line


def test_line_of_follows_yaml_merge_keys(write: WriteFile) -> None:
    # A pool built from an anchor: its merged fields are found, and errors still carry lines.
    path = write(
        "merge.yaml",
        """
        apiVersion: gpu-autoscaler/v1alpha1
        kind: ScalingPolicy
        metadata: {name: demo, namespace: ml}
        spec:
          pools:
            - &base {deployment: demo-a100, nodeClass: regular, gpuType: A100}
            - <<: *base
              deployment: demo-l4
              gpusPerReplica: 0
          triggers:
            - {name: backlog, type: rabbitmq, queue: jobs}
        """,
    )
    config = load_config([path])
    assert [str(e) for e in config.errors] == [
        f"{path}:9: spec.pools[1].gpusPerReplica: must be at least 1, not 0",
    ]


def test_overriding_a_merged_key_is_not_a_duplicate(write: WriteFile) -> None:
    path = write(
        "merge.yaml",
        """
        apiVersion: gpu-autoscaler/v1alpha1
        kind: ScalingPolicy
        metadata: {name: demo, namespace: ml}
        spec:
          pools:
            - &base {deployment: demo-a100, nodeClass: regular, gpuType: A100}
            - <<: *base
              deployment: demo-h100
              gpuType: H100
          triggers:
            - {name: backlog, type: rabbitmq, queue: jobs}
        """,
    )
    config = load_config([path])
    assert config.errors == ()
    assert [p.gpu_type for p in config.workloads[0].pools] == ["A100", "H100"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # an empty file describes nothing, which is not an error
        (b"", []),
        # comments and empty documents only
        (b"# nothing yet\n---\n---\n", []),
        # bytes that are not UTF-8
        (b"kind: \xff\xfe\x00garbage", ["1: yaml: not UTF-8 text (byte 0xff at offset 6)"]),
        # a control character YAML does not allow
        (b"kind: Scaling\x07Policy\n", ["1: yaml: unacceptable character #x0007"]),
        # an explicit tag whose constructor raises a plain ValueError
        (b"a: 1\nb: !!int abc\n", ["2: yaml: cannot read value"]),
        # a tag SafeLoader refuses: no Python objects from a ConfigMap
        (b"!!python/object/apply:os.system [echo]\n", ["1: yaml: could not determine a constructor"]),
        # an impossible date stays text instead of raising from the date constructor
        (b"- 2024-02-30\n", ["1: document: expected a mapping"]),
        # an alias cycle
        (b"&a [*a]\n", ["1: document: expected a mapping"]),
        # nesting deeper than the parser's recursion allows
        (b"[" * 5000, ["1: yaml: nested too deeply"]),
    ],
)
def test_unusual_files_become_errors(write: WriteFile, content: bytes, expected: list[str]) -> None:
    path = write("odd.yaml", "")
    path.write_bytes(content)
    errors = [str(e) for e in load_config([path]).errors]
    assert len(errors) == len(expected), errors
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(f"{path}:{start}"), error


def test_missing_path_and_directory_without_yaml(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("not a policy")
    config = load_config([tmp_path / "nope.yaml", empty])
    assert [str(e) for e in config.errors] == [
        f"{tmp_path / 'nope.yaml'}:0: path: not found",
        f"{empty}:0: path: no *.yaml or *.yml files in this directory",
    ]


def test_subdirectories_are_not_read(write: WriteFile, tmp_path: Path) -> None:
    # Each subdirectory may be a config of its own (with its own ParallelismLimits); the message
    # says how to read them instead of leaving the user to guess.
    write("all/salad/a.yaml", MINIMAL)
    config = load_config([tmp_path / "all"])
    assert [str(e) for e in config.errors] == [
        f"{tmp_path / 'all'}:0: path: no *.yaml or *.yml files in this directory "
        f"(subdirectories are not read; give them as paths: {tmp_path / 'all' / 'salad'})"
    ]


def test_directory_is_read_sorted_and_skips_hidden_entries(write: WriteFile, tmp_path: Path) -> None:
    # A mounted ConfigMap keeps the real files under hidden `..data` entries; only the visible
    # names count, in name order, and both suffixes are read.
    write("policies/b.yml", MINIMAL.replace("name: demo", "name: second").replace("demo-a100", "second-a100"))
    write("policies/a.yaml", MINIMAL)
    write("policies/.hidden.yaml", "not: [valid")
    write("policies/notes.txt", "ignored")
    config = load_config([tmp_path / "policies"])
    assert config.errors == ()
    assert [Path(f).name for f in config.files] == ["a.yaml", "b.yml"]
    assert [w.name for w in config.workloads] == ["demo", "second"]


def test_the_same_file_twice_is_read_once(write: WriteFile) -> None:
    # Otherwise every workload in it would be its own duplicate.
    path = write("a.yaml", MINIMAL)
    config = load_config([path, path.parent / "." / "a.yaml", path.parent])
    assert config.errors == ()
    assert len(config.files) == 1


def test_a_syntax_error_keeps_the_documents_before_it(write: WriteFile) -> None:
    path = write("two.yaml", MINIMAL + "---\nkind: [unclosed\n")
    config = load_config([path])
    assert [e.field for e in config.errors] == ["yaml"]
    assert config.errors[0].line == 11  # where the parser gave up: the end of the file
    assert [w.name for w in config.workloads] == ["demo"]


def test_all_problems_are_reported_in_one_pass(write: WriteFile) -> None:
    # Three files, each wrong in its own way: nothing stops at the first problem.
    a = write("a.yaml", MINIMAL.replace("maxReplicas", "x").replace("gpuType: A100", "gpuType: 4090"))
    b = write("b.yaml", "kind: Nope\n")
    c = write("c.yaml", MINIMAL.replace("queue: jobs", "queue: jobs, pollSeconds: 0"))
    config = load_config([a, b, c])
    assert [str(e) for e in config.errors] == [
        f"{a}:6: spec.pools[0].gpuType: must be a string, not 4090 (quote it)",
        f"{b}:1: apiVersion: required field is missing; use 'gpu-autoscaler/v1alpha1'",
        f"{b}:1: kind: unknown kind 'Nope'; expected ScalingPolicy or ParallelismLimits",
        f"{c}:8: spec.triggers[0].pollSeconds: must be at least 0.1, not 0",
    ]
    assert config.workloads == ()


@pytest.mark.parametrize(
    ("replace", "field", "message"),
    [
        # strict: a quoted number is a string, not an integer
        (("maxReplicas: 10", 'maxReplicas: "10"'), "spec.maxReplicas", "must be an integer, not '10'"),
        # strict: YAML 1.1 `yes` is a boolean, not a number
        (("maxReplicas: 10", "weight: yes"), "spec.weight", "must be a number, not true"),
        # a float where a whole number belongs
        (("maxReplicas: 10", "maxReplicas: 2.5"), "spec.maxReplicas", "must be an integer, not 2.5"),
        # infinity is not a cost
        (("maxReplicas: 10", "priority: .inf"), "spec.priority", "must be an integer, not inf"),
        # a mapping where a list belongs
        (
            ("queue: jobs}", "queue: jobs}\n  policy: [target]"),
            "spec.policy",
            "must be a mapping, not a list",
        ),
        # a trigger without its type
        (
            ("type: rabbitmq, ", ""),
            "spec.triggers[0].type",
            "required field is missing; one of 'rabbitmq' or",
        ),
        # an unknown field far from any known one lists the known ones
        (("maxReplicas: 10", "zzz: 1"), "spec.zzz", "unknown field 'zzz' (known: priority, weight"),
    ],
)
def test_type_errors_read_well(write: WriteFile, replace: tuple[str, str], field: str, message: str) -> None:
    text = MINIMAL.replace("spec:\n", "spec:\n  maxReplicas: 10\n")
    path = write("p.yaml", text.replace(*replace))
    errors = load_config([path]).errors
    assert [e.field for e in errors] == [field], errors
    assert errors[0].message.startswith(message), errors[0].message


def test_snake_case_spelling_is_accepted(write: WriteFile) -> None:
    # populate_by_name: the Python names work too, for people generating files from code.
    path = write("p.yaml", MINIMAL.replace("nodeClass", "node_class").replace("gpuType", "gpu_type"))
    config = load_config([path])
    assert config.errors == ()


def test_parse_text_returns_node_and_data() -> None:
    docs, errors = parse_text("x.yaml", "a: 1\n---\nb: [2]\n")
    assert errors == []
    assert [d.data for d in docs] == [{"a": 1}, {"b": [2]}]
    assert [d.index for d in docs] == [0, 1]
    assert isinstance(docs[1].node, yaml.MappingNode)
    assert docs[1].line == 3


def test_a_policy_file_over_the_size_cap_is_refused_before_parsing(write: WriteFile) -> None:
    # A 50 MB file once took 50 s and 660 MB to parse. A ConfigMap holds at most 1 MiB, so no
    # mounted policy file is larger; this one is refused from its size alone.
    path = write("big.yaml", "")
    line = b"# " + b"x" * 97 + b"\n"
    path.write_bytes(MINIMAL.encode() + line * (MAX_FILE_BYTES // len(line) + 1))
    config = load_config([path])
    size = path.stat().st_size
    assert [str(e) for e in config.errors] == [
        f"{path}:0: path: the file is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte (1 MiB) limit of "
        "a policy file (a ConfigMap holds at most 1 MiB): split its documents across several files"
    ]
    assert config.workloads == ()


def test_a_policy_file_at_the_size_cap_is_read(write: WriteFile) -> None:
    path = write("full.yaml", MINIMAL)
    path.write_bytes(path.read_bytes() + b"#" * (MAX_FILE_BYTES - path.stat().st_size))
    config = load_config([path])
    assert config.errors == () and [w.name for w in config.workloads] == ["demo"]


def test_a_file_with_too_many_documents_is_refused_at_the_first_one_over(write: WriteFile) -> None:
    path = write("many.yaml", MINIMAL + "---\n" * (MAX_DOCUMENTS + 5))
    config = load_config([path])
    # MINIMAL is the first document; each `---` line starts one more.
    starts = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line == "---"]
    first_over = starts[MAX_DOCUMENTS - 1]
    assert [str(e) for e in config.errors] == [
        f"{path}:{first_over}: document: more than {MAX_DOCUMENTS:,} documents in one file: "
        "split them across files"
    ]


def test_a_file_growing_past_the_cap_while_read_is_refused(
    write: WriteFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The size seen before reading was small (an editor or the kubelet still writing): the read
    # itself stops one byte past the cap.
    path = write("growing.yaml", "#" * (MAX_FILE_BYTES + 10))
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 0, 0, 0, 0)))
    error = read_file(str(path))
    assert str(error).startswith(f"{path}:0: path: the file is more than {MAX_FILE_BYTES:,} bytes, over")
