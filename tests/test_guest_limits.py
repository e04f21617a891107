"""Each hostile-guest limit is declared once (transparent_md.guest_limits): `run`'s
options, its config-file keys, the datapath's and responder's defaults, which limits 0
switches off, and the docs' tables are all derived from that one table."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from transparent_md.cli import run_config
from transparent_md.datapath.datapath import DatapathConfig
from transparent_md.guest_limits import GUEST, LIMITS, PORT, markdown_table
from transparent_md.responder.limits import UNLIMITED, ResponderLimits

DOC = Path(__file__).resolve().parents[1] / "docs" / "hostile-guests.md"


def run_parser() -> argparse.ArgumentParser:
    from transparent_md.cli import run

    sub = argparse.ArgumentParser().add_subparsers()
    run.register(sub)
    return sub.choices["run"]


def test_every_limit_is_a_run_option_and_a_config_key(tmp_path):
    parser = run_parser()
    for limit in LIMITS:
        action = parser._option_string_actions[limit.flag]
        assert action.dest == limit.field and action.default == limit.default
        assert limit.flag in parser.format_help()
    config = tmp_path / "run.yaml"
    config.write_text("".join(f"{limit.name}: 7\n" for limit in LIMITS))
    assert run_config.read(str(config), parser) == {limit.field: 7 for limit in LIMITS}


def test_defaults_come_from_the_table():
    responder = {f.name: f.default for f in dataclasses.fields(ResponderLimits)}
    datapath = {f.name: f.default for f in dataclasses.fields(DatapathConfig)}
    for limit in LIMITS:
        held = datapath if limit.scope == PORT else responder
        assert held[limit.field] == limit.default, limit.name


def test_zero_switches_off_every_responder_limit_that_says_so():
    off = ResponderLimits.from_flags(**{limit.field: 0 for limit in LIMITS
                                        if limit.scope == GUEST})
    for limit in LIMITS:
        if limit.scope == GUEST and limit.zero_disables:
            assert getattr(off, limit.field) == UNLIMITED, limit.name


def test_the_docs_tables_are_the_generated_ones():
    text = DOC.read_text()
    for scope in (PORT, GUEST):
        assert markdown_table(scope) in text, (
            f"docs/hostile-guests.md's {scope} limits differ from the declaration; paste the "
            "output of `python -m transparent_md.guest_limits --markdown`")


def test_limits_travel_to_workers_as_they_are():
    import json

    from transparent_md.daemon.serving import ServeSpec

    limits = ResponderLimits.from_flags(request_rate=0, header_timeout_s=2.5)
    spec = ServeSpec(netns_name=None, pin_dir="/p", shadow_prefix="100.64.0.0/10",
                     store_path="/s", token_hop_limit=1, token_secret_hex="00",
                     reuse_port=True, limits=limits)
    assert ServeSpec.from_json(json.dumps(dataclasses.asdict(spec))) == spec
