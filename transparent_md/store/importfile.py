"""Read an import file (YAML or JSON list of records) with errors that point at lines.

YAML is composed to nodes first so every key keeps its line; each record that fails
validation is reported as "FILE line N: record #I (ID), field 'F': problem", and every
problem of the file is reported at once, so one edit pass fixes them all.

An import file is untrusted input of bounded cost: at most MAX_IMPORT_BYTES, and no
YAML anchors or aliases (a 324-byte "billion laughs" document expands to gigabytes;
records never need them).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

from transparent_md.errors import UserError
from transparent_md.store.record import (
    QUOTE_IT,
    Instance,
    RecordError,
    parse_record,
)

if TYPE_CHECKING:
    from transparent_md.store.yaml_file import LineMap, TextMap

# The largest import file read. 10,000 records of ~3 KB (keys, a cloud-config, IAM)
# take ~30 MB; PyYAML needs ~15x the text in memory, so this also bounds an import's
# memory near 500 MB. A larger fleet imports in several files (without --prune).
MAX_IMPORT_BYTES = 32 * 1024 * 1024
# The file name "-" reads the records from standard input.
STDIN = "-"



def read_records(path: str) -> list[Instance]:
    """Parse and validate every record in `path` ("-": stdin); UserError lists all problems."""
    name = "<stdin>" if path == STDIN else path
    text = _read_bounded(path, name)
    data, lines, texts = _parse(name, path, text)
    if isinstance(data, dict) and "instances" in data:
        data = data["instances"]  # allow `instances: [...]` as the top level too
        lines = {k[1:]: v for k, v in lines.items() if k[:1] == ("instances",)}
        texts = {k[1:]: v for k, v in texts.items() if k[:1] == ("instances",)}
    if not isinstance(data, list):
        raise UserError(f"{name}: expected a list of instance records at the top level")
    records: list[Instance] = []
    problems: list[str] = []
    first_line: dict[str, int | None] = {}
    for index, raw in enumerate(data, start=1):
        try:
            record = parse_record(raw, f"#{index}")
        except RecordError as exc:
            for error in exc.errors:
                problems.append(_where(name, _line_for(lines, index - 1, error.field)) +
                                error.message + _spelling(texts, index - 1, error))
            continue
        line = _line_for(lines, index - 1, None)
        if record.instance_id in first_line:
            earlier = first_line[record.instance_id]
            problems.append(_where(name, line) + f"record #{index}: instance_id "
                            f"{record.instance_id!r} appears twice (first on line {earlier})")
            continue
        first_line[record.instance_id] = line
        records.append(record)
    if problems:
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        raise UserError(f"{name}: {count}, nothing imported:\n  " + "\n  ".join(problems))
    return records


def _spelling(texts: TextMap, index: int, error: RecordError) -> str:
    """For text YAML read as a number, how to write it: `: mac: "52:54:00:12:34:56"`."""
    if not error.field or not error.problem.endswith(QUOTE_IT):
        return ""
    source = texts.get((index, *error.field.split(".")))
    return f': {error.field.rsplit(".", 1)[-1]}: "{source}"' if source else ""


def _where(name: str, line: int | None) -> str:
    return f"{name} line {line}: " if line else f"{name}: "


def _read_bounded(path: str, name: str) -> str:
    """The file's text, refusing one over MAX_IMPORT_BYTES before reading it all."""
    try:
        if path == STDIN:
            blob = _read_at_most(sys.stdin.buffer)
        else:
            with open(path, "rb") as stream:
                blob = _read_at_most(stream)
    except OSError as exc:
        raise UserError(f"cannot read {name}: {exc}") from exc
    if len(blob) > MAX_IMPORT_BYTES:
        raise UserError(f"{name}: larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MiB, the "
                        "most one import reads; split it into several files")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_at_most(stream: BinaryIO) -> bytes:
    return stream.read(MAX_IMPORT_BYTES + 1)


def _parse(name: str, path: str, text: str) -> tuple[Any, LineMap, TextMap]:
    if path.endswith(".json") or text.lstrip().startswith(("[", "{")) and _is_json(text):
        try:
            return json.loads(text), {}, {}
        except json.JSONDecodeError as exc:
            raise UserError(f"{name} line {exc.lineno}: invalid JSON: {exc.msg}") from exc
        except RecursionError:
            raise UserError(f"{name}: nested too deeply to be a list of records") from None
    from transparent_md.store.yaml_file import parse_yaml  # only YAML needs PyYAML

    return parse_yaml(name, text)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _line_for(lines: LineMap, index: int, field: str | None) -> int | None:
    """The line of the failing key, else of its parent, else of the record."""
    parts = tuple(field.split(".")) if field else ()
    while True:
        line = lines.get((index, *parts))
        if line is not None or not parts:
            return line
        parts = parts[:-1]


def bind_file_links(store: Any, records: list[Instance]) -> tuple[list[Instance], list[str]]:
    """The records of a file with their port bindings naming links (`store.links`): a
    record that repeats its stored port keeps the stored link; another port is looked
    up now, and a record whose port is not here is parked. Returns the records and a
    warning for each one parked."""
    from transparent_md.store.links import bind_links

    kept = {}
    for record in records:
        if record.port is not None and record.port_ifindex is None and not record.parked:
            stored = store.get(record.instance_id)
            if stored is not None:
                kept[record.instance_id] = stored
    return bind_links(records, kept)
