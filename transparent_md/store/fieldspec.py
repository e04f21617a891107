"""How one record field is described: its file key, check, CLI flags, default and meaning.

Each field of `Instance` carries one `FieldSpec` in its dataclass metadata. That one
declaration is what the parser, `to_mapping`, the `instance add/update` flags, the
`--clear` choices and the record table in docs/records.md are all derived from, so a field
added, renamed or re-documented changes everywhere at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The dataclass metadata key under which every Instance field keeps its FieldSpec.
SPEC = "transparent_md.record"


@dataclass(frozen=True)
class Flag:
    """One `instance add/update` option that sets the field.

    `reader` says how the CLI turns the option into the field's value:
    "text" (as given), "int", "list" (repeatable), "pairs" (repeatable NAME=VALUE),
    "pair_files" (repeatable NAME=PATH, the file's text), "bytes_file", "document_file"
    (YAML or JSON), "true"/"false" (a switch pair setting a boolean).
    """

    name: str
    help: str
    metavar: str | None = "VALUE"
    reader: str = "text"


@dataclass(frozen=True)
class FieldSpec:
    """The single declaration of one record field.

    `key` is the file spelling; "section.member" puts it in a nested mapping.
    `check` names the validator in `store.record`. `derive` computes the default
    from fields declared earlier; a value equal to it is left out of the file form
    (so it keeps following), unless `show_derived`. `omit_empty` leaves a false value
    out of the file form. `aliases` are other keys that set the same field.
    """

    key: str
    meaning: str
    check: str
    default: str = ""
    flags: tuple[Flag, ...] = ()
    aliases: tuple[str, ...] = ()
    derive: Callable[[Mapping[str, Any]], Any] | None = None
    show_derived: bool = False
    omit_empty: bool = False
    required: bool = False

    @property
    def section(self) -> str | None:
        """The nested mapping the key lives in ("openstack"), or None at the top."""
        return self.key.split(".", 1)[0] if "." in self.key else None

    @property
    def member(self) -> str:
        """The key inside its section (the whole key at the top level)."""
        return self.key.rsplit(".", 1)[-1]


def spec(initial: Any = None, /, **kwargs: Any) -> Any:
    """A dataclass `field()` carrying a FieldSpec; `initial` is the attribute default."""
    return field(default=initial, metadata={SPEC: FieldSpec(**kwargs)})


__all__ = ["SPEC", "FieldSpec", "Flag", "spec"]
