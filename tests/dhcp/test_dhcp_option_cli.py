"""`transparent-md dhcp-option`: flags reach the encoder, errors are one line, exit 2."""

from __future__ import annotations

import argparse

import pytest

from transparent_md.cli.dhcp_option import EXIT_OK, EXIT_USER_ERROR, register
from transparent_md.dhcp.classless_routes import decode, parse_hex


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="transparent-md")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["dhcp-option", *argv])
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_default_is_on_link_metadata_route_for_dnsmasq(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys)
    assert code == EXIT_OK
    assert "classless-static-route,169.254.169.254/32,0.0.0.0\n" in out


def test_flags_build_the_route_list_in_order(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(
        capsys, "--format", "hex", "--via", "10.0.0.253",
        "--route", "10.9.0.0/16,10.0.0.2", "--route", "192.168.0.0/24", "--router", "10.0.0.1",
    )
    assert code == EXIT_OK
    assert [str(r) for r in decode(bytes.fromhex(out))] == [
        "169.254.169.254/32 via 10.0.0.253",
        "10.9.0.0/16 via 10.0.0.2",
        "192.168.0.0/24 on-link",
        "0.0.0.0/0 via 10.0.0.1",
    ]


def test_decode_prints_routes(capsys: pytest.CaptureFixture) -> None:
    _, hex_out, _ = run_cli(capsys, "--format", "hex", "--router", "10.0.0.1")
    code, out, _ = run_cli(capsys, "--decode", hex_out.strip())
    assert code == EXIT_OK
    assert out.splitlines() == [str(r) for r in decode(parse_hex(hex_out))]
    assert out.splitlines()[-1] == "0.0.0.0/0 via 10.0.0.1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--route", "10.0.0.1/24"], "host bits set"),
        (["--route", "10.0.0.0/40"], "bad CIDR"),
        (["--route", "169.254.169.254/32,10.0.0.9"], "duplicate destination"),
        (["--via", "10.0.0"], "bad --via next hop"),
        (["--router", "router1"], "bad --router address"),
        (["--format", "isc", "--tag", "meta"], "--tag applies to --format dnsmasq only"),
        (["--decode", "21a9fea9fe00000000"], "over 32"),
        (["--decode", "20a9fe"], "truncated"),
        ([f"--route=10.{i}.0.0/16" for i in range(40)], "at most 255"),
    ],
)
def test_user_errors_are_one_line(
    capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == EXIT_USER_ERROR
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_help_explains_both_modes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run_cli(capsys, "--help")
    out = capsys.readouterr().out
    for phrase in ("default-gateway mode", "route-based mode", "--router", "--decode"):
        assert phrase in out
