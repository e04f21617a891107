"""Read an import file (YAML or JSON list of records) with errors that point at lines.

YAML is composed to nodes first so every key keeps its line; a record that fails
validation is then reported as "FILE line N: record #I (ID), field 'F': problem".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from transparent_md.errors import UserError
from transparent_md.store.record import Instance, RecordError, normalise_key, parse_record

LineMap = dict[tuple[Any, ...], int]


def read_records(path: str) -> list[Instance]:
    """Parse and validate every record in `path`; raise UserError on the first problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    data, lines = _parse(path, text)
    if isinstance(data, dict) and "instances" in data:
        data = data["instances"]  # allow `instances: [...]` as the top level too
        lines = {k[1:]: v for k, v in lines.items() if k[:1] == ("instances",)}
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of instance records at the top level")
    records = []
    for index, raw in enumerate(data, start=1):
        try:
            records.append(parse_record(raw, f"#{index}"))
        except RecordError as exc:
            line = _line_for(lines, index - 1, exc.field)
            where = f"{path} line {line}: " if line else f"{path}: "
            raise UserError(where + str(exc)) from exc
    return records


def _parse(path: str, text: str) -> tuple[Any, LineMap]:
    if path.endswith(".json") or text.lstrip().startswith(("[", "{")) and _is_json(text):
        try:
            return json.loads(text), {}
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {exc.lineno}: invalid JSON: {exc.msg}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML: {exc.problem or exc.context}") from exc
    if node is None:
        return [], {}
    lines: LineMap = {}
    _walk(path, node, (), lines)
    data = yaml.SafeLoader(text).get_single_data()
    return data, lines


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _walk(path: str, node: yaml.Node, key: tuple[Any, ...], lines: LineMap) -> None:
    lines[key] = node.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _walk(path, child, (*key, i), lines)
    elif isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            name = normalise_key(key_node.value)
            if name in seen:
                raise UserError(f"{path} line {key_node.start_mark.line + 1}: "
                                f"key '{key_node.value}' appears twice in the same mapping")
            seen.add(name)
            _walk(path, value_node, (*key, name), lines)
            lines[(*key, name)] = key_node.start_mark.line + 1


def _line_for(lines: LineMap, index: int, field: str | None) -> int | None:
    """The line of the failing key, else of its parent, else of the record."""
    parts = tuple(field.split(".")) if field else ()
    while True:
        line = lines.get((index, *parts))
        if line is not None or not parts:
            return line
        parts = parts[:-1]
