"""The record's fields as documentation: the table in docs/records.md, rendered from `Instance`.

`python -m transparent_md.store.fields --markdown` prints the "Record format" table;
a test checks that docs/records.md carries exactly this table, so the docs cannot drift
from the declaration in `store.record`.
"""

from __future__ import annotations

import argparse
import sys

from transparent_md.store.fieldspec import FieldSpec
from transparent_md.store.record import FIELDS, record_specs

TABLE_HEADER = ("field", "`instance add` flag", "default", "meaning")


def file_keys() -> list[str]:
    """Every key a record file may set, sections spelled `section.member`, in order."""
    return [key for _, s in record_specs() for key in (s.key, *s.aliases)]


def clearable_fields() -> list[str]:
    """Keys `instance update --clear` accepts: every key, section and member but the id."""
    return [key for key in dict.fromkeys((*FIELDS, *file_keys())) if key != "instance_id"]


def markdown_table() -> str:
    """The record-format table of docs/records.md, one row per field."""
    rows = [TABLE_HEADER, ("---",) * len(TABLE_HEADER)]
    rows += [_row(s) for _, s in record_specs()]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def _row(field_spec: FieldSpec) -> tuple[str, str, str, str]:
    keys = " or ".join(f"`{k}`" for k in (field_spec.key, *field_spec.aliases))
    flags = ", ".join(_flag_text(f.name, f.metavar) for f in field_spec.flags)
    if field_spec.required:
        flags = "`INSTANCE_ID`"
    return keys, flags or "—", field_spec.default or "—", field_spec.meaning


def _flag_text(name: str, metavar: str | None) -> str:
    return f"`{name} {metavar}`" if metavar else f"`{name}`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transparent_md.store.fields",
        description="Print the instance record's fields, as declared in store.record.")
    parser.add_argument("--markdown", action="store_true",
                        help="the record-format table of docs/records.md (default: one key a line)")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown_table() if args.markdown else "\n".join(file_keys()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
