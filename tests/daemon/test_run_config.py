"""`run --config`: typed like the command line, errors that name the line and the key."""

from __future__ import annotations

import pytest

from transparent_md.cli.main import build_parser
from transparent_md.cli.run_config import merge, read
from transparent_md.datapath.ports import GatewayRule
from transparent_md.errors import UserError


@pytest.fixture()
def parser():
    top = build_parser("run")
    return top._subparsers._group_actions[0].choices["run"]  # the `run` verb's parser


def write(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_values_are_typed_like_flags(tmp_path, parser):
    values = read(write(tmp_path, "bridge: [br0, 'qbr*']\ngateway: br-iso=10.9.0.1\n"
                                  "metrics: 127.0.0.1:9464\nworkers: 2\n"
                                  "no-metadata-arp: true\nexclude-port: [vx*]\n"), parser)
    assert values == {"bridge": ["br0", "qbr*"], "gateway": [GatewayRule("br-iso", "10.9.0.1")],
                      "metrics": ("127.0.0.1", 9464), "workers": 2, "no_metadata_arp": True,
                      "exclude_port": ["vx*"]}


@pytest.mark.parametrize(("text", "message"), [
    ("bridge: [br0]\nbridges: [br1]\n", "line 2: key 'bridges': not an option of `run`"),
    ("bridge: br0\ngateway: [br0-no-ip]\n", "line 2: key 'gateway': 'br0-no-ip': expected"),
    ("workers: [1, 2]\n", "line 1: key 'workers': takes one value, not a list"),
    ("workers: many\n", "line 1: key 'workers': invalid literal"),
    ("log-format: xml\n", "line 1: key 'log-format': 'xml' is not one of text, json"),
    ("no-metadata-arp: maybe\n", "line 1: key 'no-metadata-arp': expected true or false"),
    ("bridge: br0\nbridge: br1\n", "line 2: key 'bridge': appears twice"),
    ("- br0\n", "line 1: expected a mapping"),
    ("bridge: &b br0\nport: *b\n", "line 1: YAML anchors and aliases are not allowed"),
    ("bridge: [br0\n", "invalid YAML"),
])
def test_errors_name_the_line_and_the_key(tmp_path, parser, text, message):
    with pytest.raises(UserError) as caught:
        read(write(tmp_path, text), parser)
    assert message in str(caught.value), str(caught.value)
    assert str(tmp_path / "run.yaml") in str(caught.value)


def test_the_command_line_wins(tmp_path, parser):
    args = parser.parse_args(["--bridge", "br9", "--workers", "1"])
    merged = merge(args, parser, read(write(tmp_path, "bridge: [br0]\nworkers: 3\n"), parser))
    assert merged.bridge == ["br9"]
    assert merged.workers == 3  # 1 is the default: the file's value applies
