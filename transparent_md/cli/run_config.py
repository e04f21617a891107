"""`run --config FILE`: the same options as the command line, in a YAML file.

    bridge: [br-tenant1, "qbr*"]
    exclude-port: [vnet-mgmt*]
    gateway: ["br-iso=10.9.0.1"]
    metrics: 127.0.0.1:9464

Keys are the long option names without dashes in front; a repeatable option takes a
list (or one value). An option given on the command line wins over the file. On SIGHUP
the daemon reads the file again and applies what can change without a restart (bridges,
port selection, gateways); see `RELOADABLE`. Errors name the file, the line and the key.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from transparent_md.errors import UserError

# Options a SIGHUP applies to the running daemon; others need a restart.
RELOADABLE = frozenset({"bridge", "ports", "exclude_port", "gateway"})
# A run configuration is a few lines; anything larger is a mistake (or an attack).
MAX_CONFIG_BYTES = 1 << 20
# Not settable from the file: the file itself, and the verb's own plumbing.
_NOT_IN_FILE = frozenset({"help", "config", "handler", "run_parser"})


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option name without dashes -> its action."""
    found = {}
    for action in parser._actions:  # argparse offers no public listing of its actions
        if action.dest in _NOT_IN_FILE:
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                found[option[2:]] = action
    return found


def read(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """dest -> typed value for every key in the file; UserError naming line and key."""
    try:
        raw = Path(path).read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as exc:
        raise UserError(f"--config {path}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a run config")
    try:
        text = raw.decode("utf-8")
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise UserError(f"{path} line {event.start_mark.line + 1}: YAML anchors and "
                                "aliases are not allowed in a run config")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML: {exc.problem or exc.context}") from exc
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path} line {node.start_mark.line + 1}: expected a mapping of "
                        "option: value")
    options = _options(parser)
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        where = f"{path} line {key_node.start_mark.line + 1}: key '{key}'"
        action = options.get(key)
        if action is None:
            raise UserError(f"{where}: not an option of `run` (see `transparent-md run --help`)")
        if action.dest in values:
            raise UserError(f"{where}: appears twice")
        value = yaml.safe_load(yaml.serialize(value_node))
        values[action.dest] = _typed(where, action, value)
    return values


def _typed(where: str, action: argparse.Action, value: Any) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    repeatable = isinstance(action, argparse._AppendAction)
    items = value if isinstance(value, list) and repeatable else [value]
    if isinstance(value, list) and not repeatable:
        raise UserError(f"{where}: takes one value, not a list")
    typed = []
    for item in items:
        if isinstance(item, (dict, list)) or item is None:
            raise UserError(f"{where}: expected a plain value, got {item!r}")
        text = str(item).lower() if isinstance(item, bool) else str(item)
        try:
            converted = action.type(text) if action.type else text
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise UserError(f"{where}: {exc}") from exc
        if action.choices is not None and converted not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise UserError(f"{where}: {converted!r} is not one of {choices}")
        typed.append(converted)
    return typed if repeatable else typed[0]


def merge(args: argparse.Namespace, parser: argparse.ArgumentParser,
          values: dict[str, Any]) -> argparse.Namespace:
    """`args` with the file's values wherever the command line left the default."""
    merged = argparse.Namespace(**vars(args))
    for dest, value in values.items():
        if getattr(args, dest, None) == parser.get_default(dest):
            setattr(merged, dest, value)
    return merged
