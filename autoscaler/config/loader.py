"""Reading policy files: YAML documents that remember their line numbers, and readable errors.

`read_sources` turns paths (files, or directories of `*.yaml`/`*.yml`) into `SourceDocument`s, each
holding the parsed data and its YAML node tree, so any error can later be pinned to a line with
`SourceDocument.line_of(path)`. `parse_document` checks apiVersion and kind and validates a document
against its pydantic model (`config.models`), translating pydantic's errors into
`file:line: field: message` lines a person can act on. Nothing here raises for bad input: every
problem comes back as a `ConfigError`. Callers: `config.load_config`; `config.compile`, which
reports its cross-document errors through `SourceDocument.error`; and `sim.scenario`, which reads
its own documents with `parse_text` and `translate_validation_error`.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from autoscaler.config.models import API_VERSION, DOCUMENT_MODELS, KINDS, PATTERN_HINTS, Document

PathPart = str | int
FieldPath = tuple[PathPart, ...]

YAML_SUFFIXES = (".yaml", ".yml")
# A ConfigMap holds at most 1 MiB of data in all, so no policy file mounted from one is larger, and
# no hand-written one comes near it. Bigger is a mistake (a log or a dump in the directory) that
# would cost about a second and 13 MB of memory per MB to parse: refuse it from its size alone.
MAX_FILE_BYTES = 1024 * 1024
# Dozens of workloads is a large config; documents past this many are refused, not parsed.
MAX_DOCUMENTS = 1000
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class _Located:
    """Something to say about a place in the policy files. `line` is 1-based; 0 means the file or
    path as a whole."""

    file: str
    line: int
    field: str
    message: str


@dataclass(frozen=True)
class ConfigError(_Located):
    """One problem in the policy files."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass(frozen=True)
class ConfigWarning(_Located):
    """A setting that is valid but has no effect (a policy ignores it). Reported, never refused."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: warning: {self.message}"


def format_path(path: Sequence[PathPart]) -> str:
    """`("spec", "pools", 1, "gpuType")` -> `spec.pools[1].gpuType`. Map keys that are not plain
    names (GPU types with dots, header names) are quoted so the path stays unambiguous."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out or "document"


def describe(value: Any) -> str:
    """A short rendering of an input value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def closest(word: object, candidates: Iterable[str]) -> str | None:
    """The candidate `word` was probably meant to be: the same in another case, or close."""
    if not isinstance(word, str):
        return None
    options = list(candidates)
    for option in options:
        if option.lower() == word.lower() and option != word:
            return option
    lowered = {option.lower(): option for option in options}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def did_you_mean(word: object, candidates: Iterable[str]) -> str:
    """`; did you mean 'x'?` when a candidate is close, else empty."""
    match = closest(word, candidates)
    return f"; did you mean '{match}'?" if match else ""


# ----------------------------------------------------------------------------------------------
# Documents and their lines


class _FileText:
    """One file's text, composed into YAML node trees (for line numbers) only when a line is asked
    for: an error or a warning. A clean fleet of 10,000 documents never needs them, and kept for
    every document they were most of the loader's memory. Composed again by the loader that read
    the data (libyaml accepts a few texts PyYAML's own scanner refuses, such as a tab after a
    value; both give the same lines where both read a file), and constructed, so that `<<` merges
    are flattened into the nodes as they were when the data was read."""

    __slots__ = ("_loader_type", "_nodes", "text")

    def __init__(self, text: str, loader_type: type, nodes: list[yaml.Node] | None = None) -> None:
        self.text = text
        self._loader_type = loader_type
        self._nodes = nodes

    def node(self, index: int) -> yaml.Node:
        if self._nodes is None:
            loader = self._loader_type(self.text)
            try:
                self._nodes = [node for node, _, _ in _documents("", loader)]
            finally:
                loader.dispose()
        return self._nodes[index]


@dataclass(frozen=True)
class SourceDocument:
    """One YAML document of one file: its data, the problems the YAML layer itself found in it
    (duplicate keys), and, on demand, its node tree (for line numbers)."""

    file: str
    index: int
    origin: _FileText = field(repr=False, compare=False)
    data: Any
    problems: tuple[ConfigError, ...] = ()

    @property
    def node(self) -> yaml.Node:
        return self.origin.node(self.index)

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def line_of(self, path: Sequence[PathPart]) -> int:
        """The line of the deepest part of `path` that exists in the document: a missing field is
        reported where its parent is."""
        line = self.line
        node = self.node
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            line, node = child
        return line

    def error(self, path: Sequence[PathPart], message: str) -> ConfigError:
        return ConfigError(self.file, self.line_of(path), format_path(path), message)

    def warning(self, path: Sequence[PathPart], message: str) -> ConfigWarning:
        return ConfigWarning(self.file, self.line_of(path), format_path(path), message)


def _child(node: yaml.Node, part: PathPart) -> tuple[int, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        found: tuple[int, yaml.Node] | None = None
        # The constructor has already flattened `<<` merges into this node; when a key repeats,
        # the last one is the value that counts, so keep the last match.
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                found = (int(key_node.start_mark.line) + 1, value_node)
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item: yaml.Node = node.value[part]
        return int(item.start_mark.line) + 1, item
    return None


class _Constructor(yaml.constructor.SafeConstructor):
    """SafeConstructor that leaves dates as text (no policy field is a date, and PyYAML's date
    constructor raises a bare ValueError on impossible dates such as 2024-02-30) and that turns any
    other failure of a constructor into a located YAML error (`!!int abc` is a bare ValueError)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read value: {exc}", node.start_mark
            ) from exc


def _timestamp_as_text(loader: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)  # type: ignore[type-var]


class _Loader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    _Constructor,
    yaml.resolver.Resolver,
):
    """The pure-Python loader: its messages and lines are the ones every error is reported with."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Constructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


_FastLoader: type | None = None
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CLoader(yaml.composer.Composer, CParser, _Constructor, yaml.resolver.Resolver):
        """libyaml's scanner and parser (about 7 times faster: 10,000 documents in 4.6 s instead
        of 21 s) under PyYAML's Python composer. libyaml's own composer recurses in C, so a deeply
        nested file would overflow the C stack and kill the process; Python's composer raises
        RecursionError instead. Only for files that parse cleanly: on any error `parse_text` parses
        again with `_Loader`, whose messages and lines are the ones reported."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            _Constructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _FastLoader = _CLoader


def _duplicate_keys(file: str, root: yaml.Node) -> list[ConfigError]:
    """PyYAML keeps the last of two equal keys without a word; in a policy file that silently drops
    half of a setting, so report it. Runs on the node tree before `<<` merges are flattened, since
    a key that overrides a merged one is intended."""
    problems: list[ConfigError] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, FieldPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # aliases share nodes, and may even form cycles
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    stack.append((value_node, path))
                    continue
                line = int(key_node.start_mark.line) + 1
                ident = (str(key_node.tag), str(key_node.value))
                if ident in first:
                    problems.append(
                        ConfigError(
                            file,
                            line,
                            format_path((*path, key_node.value)),
                            f"duplicate key (first at line {first[ident]}); only the last one would count",
                        )
                    )
                else:
                    first[ident] = line
                stack.append((value_node, (*path, str(key_node.value))))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
    problems.sort(key=lambda e: e.line)
    return problems


def _yaml_error(file: str, text: str, exc: yaml.YAMLError) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context:
            where = f" at line {int(exc.context_mark.line) + 1}" if exc.context_mark is not None else ""
            message = f"{exc.problem} ({exc.context}{where})"
        return ConfigError(file, line, "yaml", message)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        char = exc.character
        code = (
            char if isinstance(char, int) else ord(char) if isinstance(char, str) and len(char) == 1 else None
        )
        shown = f"#x{code:04x}" if code is not None else repr(char)
        return ConfigError(file, line, "yaml", f"unacceptable character {shown}: {exc.reason}")
    return ConfigError(file, 1, "yaml", str(exc).splitlines()[0] if str(exc) else "invalid YAML")


def _decode(file: str, raw: bytes) -> tuple[str | None, ConfigError | None]:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16"), None
        except UnicodeDecodeError:
            return None, ConfigError(file, 1, "yaml", "not valid UTF-16 text")
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, ConfigError(
            file, line, "yaml", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        )


class _TooManyDocumentsError(Exception):
    """A file holds more than MAX_DOCUMENTS documents; `line`: where the first one too many starts."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _documents(file: str, loader: Any) -> Iterator[tuple[yaml.Node, tuple[ConfigError, ...], Any]]:
    """Each document `loader` reads: its node, its duplicate keys (found before the constructor
    flattens `<<` merges into the node) and its data. A document past MAX_DOCUMENTS is refused
    before it is parsed, at its `---`."""
    count = 0
    while loader.check_node():
        if count == MAX_DOCUMENTS:
            raise _TooManyDocumentsError(int(loader.peek_event().start_mark.line) + 1)
        count += 1
        node = loader.get_node()
        if node is None:
            break
        problems = tuple(_duplicate_keys(file, node))
        yield node, problems, loader.construct_document(node)


def _fast_documents(file: str, text: str, loader_type: type) -> list[SourceDocument]:
    # libyaml's reader does not refuse every character PyYAML's does: check them the same way.
    yaml.reader.Reader(text)
    origin = _FileText(text, loader_type)
    loader = loader_type(text)
    try:
        return [
            SourceDocument(file, i, origin, data, problems)
            for i, (_, problems, data) in enumerate(_documents(file, loader))
        ]
    finally:
        loader.dispose()


def parse_text(file: str, text: str) -> tuple[list[SourceDocument], list[ConfigError]]:
    """All documents of one file. A YAML syntax error ends the file (the parser cannot resync);
    the documents before it are kept."""
    if _FastLoader is not None:
        try:
            return _fast_documents(file, text, _FastLoader), []
        except (yaml.YAMLError, RecursionError, _TooManyDocumentsError):
            pass  # parsed again below, for the messages and lines every error is reported with
    sources: list[SourceDocument] = []
    # The file had an error (or libyaml is missing): its nodes are kept, they are about to be needed.
    nodes: list[yaml.Node] = []
    origin = _FileText(text, _Loader, nodes)
    loader: _Loader | None = None
    try:
        # The reader checks the whole text for forbidden characters as soon as it is created.
        loader = _Loader(text)
        for node, problems, data in _documents(file, loader):
            nodes.append(node)
            sources.append(SourceDocument(file, len(sources), origin, data, problems))
    except _TooManyDocumentsError as exc:
        message = f"more than {MAX_DOCUMENTS:,} documents in one file: split them across files"
        return sources, [ConfigError(file, exc.line, "document", message)]
    except yaml.YAMLError as exc:
        return sources, [_yaml_error(file, text, exc)]
    except RecursionError:
        line = int(loader.line) + 1 if loader is not None else 1
        return sources, [ConfigError(file, line, "yaml", "nested too deeply")]
    finally:
        if loader is not None:
            loader.dispose()
    return sources, []


def _empty_directory_message(path: Path) -> str:
    message = "no *.yaml or *.yml files in this directory"
    # Subdirectories are not read (each may be a separate config with its own ParallelismLimits);
    # say so when that is the likely surprise.
    nested = sorted(
        str(child)
        for child in path.iterdir()
        if child.is_dir() and not child.name.startswith(".") and any(child.glob("*.y*ml"))
    )
    if nested:
        message += f" (subdirectories are not read; give them as paths: {' '.join(nested)})"
    return message


def expand_paths(paths: Sequence[str | Path]) -> tuple[list[str], list[ConfigError]]:
    """Files to read, in order: each file as given, each directory's `*.yaml`/`*.yml` sorted by
    name. Hidden entries are skipped: a mounted ConfigMap keeps its real files under `..data`."""
    files: list[str] = []
    errors: list[ConfigError] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:  # the same file twice would report every workload as a duplicate
            seen.add(key)
            files.append(str(path))

    for given in paths:
        path = Path(given)
        try:
            if path.is_dir():
                found = sorted(
                    child
                    for child in path.iterdir()
                    if child.suffix in YAML_SUFFIXES and not child.name.startswith(".") and child.is_file()
                )
                if not found:
                    errors.append(ConfigError(str(path), 0, "path", _empty_directory_message(path)))
                for child in found:
                    add(child)
            elif path.is_file():
                add(path)
            elif path.exists():
                errors.append(ConfigError(str(path), 0, "path", "not a regular file or a directory"))
            else:
                errors.append(ConfigError(str(path), 0, "path", "not found"))
        except OSError as exc:
            errors.append(ConfigError(str(path), 0, "path", f"cannot read: {exc.strerror or exc}"))
    return files, errors


def read_file(file: str) -> bytes | ConfigError:
    """The bytes of one policy file, or why not: unreadable, or over `MAX_FILE_BYTES`. The size is
    checked before reading, and the read stops one byte past the cap, so a file that grows while it
    is read (an editor or the kubelet writing it) costs no more."""
    try:
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            raw = handle.read(MAX_FILE_BYTES + 1) if size <= MAX_FILE_BYTES else b""
    except OSError as exc:
        return ConfigError(file, 0, "path", f"cannot read: {exc.strerror or exc}")
    if size > MAX_FILE_BYTES or len(raw) > MAX_FILE_BYTES:
        shown = f"{size:,} bytes" if size > MAX_FILE_BYTES else f"more than {MAX_FILE_BYTES:,} bytes"
        return ConfigError(
            file,
            0,
            "path",
            f"the file is {shown}, over the {MAX_FILE_BYTES:,}-byte (1 MiB) limit of a policy file "
            "(a ConfigMap holds at most 1 MiB): split its documents across several files",
        )
    return raw


def read_sources(paths: Sequence[str | Path]) -> tuple[list[str], list[SourceDocument], list[ConfigError]]:
    """Files read, their non-empty documents, and the errors of the path and YAML layers."""
    files, errors = expand_paths(paths)
    sources: list[SourceDocument] = []
    for file in files:
        raw = read_file(file)
        if isinstance(raw, ConfigError):
            errors.append(raw)
            continue
        text, error = _decode(file, raw)
        if text is None:
            errors.append(error or ConfigError(file, 1, "yaml", "cannot decode"))
            continue
        docs, yaml_errors = parse_text(file, text)
        errors.extend(yaml_errors)
        # An empty document (a trailing `---`, a comment-only file) describes nothing; skip it.
        sources.extend(doc for doc in docs if doc.data is not None)
    return files, sources, errors


# ----------------------------------------------------------------------------------------------
# Validation against the models


def parse_document(source: SourceDocument) -> tuple[Document | None, list[ConfigError]]:
    """Check apiVersion and kind, then validate against the kind's model. A document with a wrong
    apiVersion or kind is not validated further: its spec may follow another schema entirely."""
    data = source.data
    if not isinstance(data, dict):
        return None, [
            source.error(
                (), f"expected a mapping with apiVersion, kind, metadata and spec, not {describe(data)}"
            )
        ]
    errors: list[ConfigError] = []
    if "apiVersion" not in data:
        errors.append(source.error(("apiVersion",), f"required field is missing; use '{API_VERSION}'"))
    elif data["apiVersion"] != API_VERSION:
        errors.append(
            source.error(
                ("apiVersion",),
                f"unsupported apiVersion {describe(data['apiVersion'])}; "
                f"this autoscaler reads '{API_VERSION}'",
            )
        )
    kind = data.get("kind")
    if "kind" not in data:
        errors.append(source.error(("kind",), f"required field is missing; one of {', '.join(KINDS)}"))
    elif not isinstance(kind, str):
        errors.append(source.error(("kind",), f"must be {' or '.join(KINDS)}, not {describe(kind)}"))
    elif kind not in DOCUMENT_MODELS:
        hint = did_you_mean(kind, KINDS)
        errors.append(
            source.error(("kind",), f"unknown kind {describe(kind)}; expected {' or '.join(KINDS)}{hint}")
        )
    if errors or not isinstance(kind, str):
        return None, errors
    model = DOCUMENT_MODELS[kind]
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, translate_validation_error(exc, source, model, data)


@dataclass
class _Pending:
    path: FieldPath
    message: str
    kind: str
    suggestion: str | None = None


def translate_validation_error(
    exc: ValidationError,
    source: SourceDocument,
    model: type[BaseModel],
    data: Any,
    base: FieldPath = (),
) -> list[ConfigError]:
    """Pydantic errors -> located, readable errors. `data` is the input that `model` validated and
    `base` its path inside the document (non-empty for a policy's options inside `spec.policy`)."""
    pending: list[_Pending] = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        ctx: dict[str, Any] = dict(err.get("ctx") or {})
        path = _clean_loc(data, err["loc"], keep_last=kind == "missing")
        if kind == "config_problems":
            for rel, message in ctx.get("problems", ()):
                pending.append(_Pending((*path, *rel), message, kind))
            continue
        if kind == "extra_forbidden" and path:
            names = _field_names(model, data, path[:-1])
            suggestion = closest(path[-1], names)
            if suggestion is not None:
                hint = f"; did you mean '{suggestion}'?"
            else:
                hint = f" (known: {', '.join(names)})" if names else ""
            pending.append(_Pending(path, f"unknown field '{path[-1]}'{hint}", kind, suggestion))
            continue
        if kind in ("union_tag_not_found", "union_tag_invalid"):
            key = str(ctx.get("discriminator", "'type'")).strip("'\"")
            tags = _union_tags(model, data, path, key)
            expected = " or ".join(f"'{t}'" for t in tags) if tags else str(ctx.get("expected_tags", ""))
            if kind == "union_tag_not_found":
                message = f"required field is missing; one of {expected}"
            else:
                tag = ctx.get("tag")
                message = f"unknown {key} {describe(tag)}; expected {expected}{did_you_mean(tag, tags)}"
            pending.append(_Pending((*path, key), message, kind))
            continue
        pending.append(_Pending(path, _message(kind, err["msg"], ctx, err.get("input")), kind))

    # A typo such as `gpuTyp` also makes `gpuType` missing; the "did you mean" already says so.
    suggested = {(*p.path[:-1], p.suggestion) for p in pending if p.suggestion is not None}
    kept = [p for p in pending if not (p.kind == "missing" and p.path in suggested)]
    return [source.error((*base, *p.path), p.message) for p in kept]


def _clean_loc(data: Any, loc: tuple[int | str, ...], keep_last: bool) -> FieldPath:
    """Follow pydantic's `loc` through the input and keep only the steps that exist there: pydantic
    inserts steps of its own (the tag of a discriminated union, `[key]`, validator names)."""
    out: list[PathPart] = []
    current = data
    for i, part in enumerate(loc):
        found, child = _step(current, part)
        if found:
            out.append(part if isinstance(current, list) else str(part))
            current = child
        elif keep_last and i == len(loc) - 1:
            out.append(str(part))
        # else: a step pydantic made up; leave it out.
    return tuple(out)


def _step(current: Any, part: PathPart) -> tuple[bool, Any]:
    """The child of `current` at `part`, when there is one."""
    if isinstance(current, dict):
        return (True, current[part]) if part in current else (False, None)
    if isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
        return True, current[part]
    return False, None


_MESSAGES: dict[str, str] = {
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_from_float": "must be a whole number",
    "int_parsing": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "finite_number": "must be a finite number",
}


def _bound(value: object) -> str:
    """`0.0` -> `0`: a float bound of a field reads better without its fraction."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _message(kind: str, msg: str, ctx: Mapping[str, Any], value: Any) -> str:
    got = describe(value)
    if kind == "missing":
        return "required field is missing"
    if kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
        # Strict floats take integers; one they refuse is too large to be a float at all.
        return f"too large: must be a finite number, not {got}"
    if kind in _MESSAGES:
        text = f"{_MESSAGES[kind]}, not {got}"
        if kind == "string_type" and isinstance(value, int | float):
            text += " (quote it)"
        return text
    if kind in ("literal_error", "enum"):
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"must be {ctx.get('expected', '')}, not {got}{did_you_mean(value, options)}"
    if kind == "greater_than":
        return f"must be greater than {_bound(ctx.get('gt'))}, not {got}"
    if kind == "greater_than_equal":
        return f"must be at least {_bound(ctx.get('ge'))}, not {got}"
    if kind == "less_than":
        return f"must be less than {_bound(ctx.get('lt'))}, not {got}"
    if kind == "less_than_equal":
        return f"must be at most {_bound(ctx.get('le'))}, not {got}"
    if kind in ("too_short", "string_too_short"):
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must have at least {ctx.get('min_length')} items"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(str(ctx.get("pattern")), f"matching {ctx.get('pattern')}")
        return f"{got} is not {hint}"
    if kind == "invalid_key":
        return f"field names must be text, not {got}"
    if kind == "recursion_loop":
        return "refers to itself (a YAML alias cycle)"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if msg.startswith("Input should be "):
        return f"must be {msg.removeprefix('Input should be ')}, not {got}"
    return msg


# ----------------------------------------------------------------------------------------------
# Which fields a model has at a path (for "did you mean", and the tags of a union)


def _field_names(model: type[BaseModel], data: Any, path: FieldPath) -> list[str]:
    target = _resolve(_type_at(model, data, path), _value_at(data, path))
    if isinstance(target, type) and issubclass(target, BaseModel):
        return [info.alias or name for name, info in target.model_fields.items()]
    return []


def _union_tags(model: type[BaseModel], data: Any, path: FieldPath, key: str) -> list[str]:
    tags: list[str] = []
    for member in _union_members(_type_at(model, data, path)):
        for name, info in member.model_fields.items():
            if (info.alias or name) == key and get_origin(info.annotation) is Literal:
                tags.extend(str(a) for a in get_args(info.annotation))
    return tags


def _value_at(data: Any, path: FieldPath) -> Any:
    current = data
    for part in path:
        found, current = _step(current, part)
        if not found:
            return None
    return current


def _type_at(model: type[BaseModel], data: Any, path: FieldPath) -> Any:
    """The annotation that describes the value at `path` (unions left unresolved)."""
    current: Any = model
    value = data
    for part in path:
        target = _resolve(current, value)
        if isinstance(target, type) and issubclass(target, BaseModel):
            infos = {info.alias or name: info for name, info in target.model_fields.items()}
            infos.update(target.model_fields)
            info = infos.get(str(part))
            if info is None:
                return None
            current = info.annotation
        elif get_origin(target) is list and isinstance(part, int):
            current = get_args(target)[0]
        elif get_origin(target) is dict:
            current = get_args(target)[1]
        else:
            return None
        value = _value_at(value, (part,))
    return current


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    annotation = _strip(annotation)
    if get_origin(annotation) not in (Union, types.UnionType):
        return []
    return [
        arg
        for arg in map(_strip, get_args(annotation))
        if isinstance(arg, type) and issubclass(arg, BaseModel)
    ]


def _resolve(annotation: Any, value: Any) -> Any:
    """Unwrap Annotated and Optional; pick a union's member model by its Literal discriminator."""
    annotation = _strip(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in map(_strip, get_args(annotation)) if a is not type(None)]
        if len(args) == 1:
            return _resolve(args[0], value)
        if isinstance(value, dict):
            for member in _union_members(annotation):
                for name, info in member.model_fields.items():
                    if get_origin(info.annotation) is Literal and value.get(info.alias or name) in get_args(
                        info.annotation
                    ):
                        return member
        return None
    return annotation
