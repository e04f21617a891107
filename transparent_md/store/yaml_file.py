"""The YAML half of reading an import file: composed to nodes first so every key keeps
its line, with anchors and aliases refused before anything expands. Imported only when
a file is YAML, so commands that read no YAML never load PyYAML."""

from __future__ import annotations

from typing import Any

import yaml

from transparent_md.errors import UserError
from transparent_md.store.record import normalise_key

# Where each key of the document is (its line), and how each scalar was spelt.
LineMap = dict[tuple[Any, ...], int]
TextMap = dict[tuple[Any, ...], str]


def parse_yaml(name: str, text: str) -> tuple[Any, LineMap, TextMap]:
    """The document, each key's line and each scalar's spelling; UserError on bad YAML."""
    loader = _PlainLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return [], {}, {}
        lines: LineMap = {}
        texts: TextMap = {}
        _walk(name, node, (), lines, texts)
        return loader.construct_document(node), lines, texts
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{name}{line}: invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{name}: invalid YAML: {exc}") from exc
    except RecursionError:
        raise UserError(f"{name}: nested too deeply to be a list of records") from None
    finally:
        loader.dispose()


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases as it composes, before any expansion."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _refusal("alias", f"*{event.anchor}", event.start_mark)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _refusal("anchor", f"&{anchor}", event.start_mark)
        return super().compose_node(parent, index)


def _refusal(kind: str, spelled: str, mark: Any) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(
        problem=f"YAML {kind} {spelled} refused: import files may not use anchors or "
                "aliases (they can expand a small file into gigabytes); write each "
                "record out in full",
        problem_mark=mark)


def _walk(name: str, node: yaml.Node, key: tuple[Any, ...], lines: LineMap,
          texts: TextMap) -> None:
    lines[key] = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        texts[key] = node.value
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _walk(name, child, (*key, i), lines, texts)
    elif isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            member = normalise_key(key_node.value)
            if member in seen:
                raise UserError(f"{name} line {key_node.start_mark.line + 1}: "
                                f"key '{key_node.value}' appears twice in the same mapping")
            seen.add(member)
            _walk(name, value_node, (*key, member), lines, texts)
            lines[(*key, member)] = key_node.start_mark.line + 1
