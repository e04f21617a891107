"""Each renderer's output carries the right bytes, and each real server's checker takes it.

Checkers: ISC `dhcpd -t`, `kea-dhcp4 -t`, `dnsmasq --test`. Each runs on a full
config file in a tmp dir (nothing is started). A negative control per checker shows
it would reject a broken file, so a pass means something.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from transparent_md.dhcp.classless_routes import Route, build_routes, decode, parse_route
from transparent_md.dhcp.formats import RENDERERS, render
from transparent_md.errors import UserError

DHCPD = "/usr/sbin/dhcpd"
KEA_DHCP4 = shutil.which("kea-dhcp4") or "/usr/sbin/kea-dhcp4"
DNSMASQ = "/usr/sbin/dnsmasq"

ROUTE_SETS = {
    "on-link": build_routes(),
    "via": build_routes(IPv4Address("10.0.0.253")),
    "router+extra": build_routes(
        extra=[parse_route("10.9.0.0/16,10.0.0.2"), parse_route("192.168.128.0/17")],
        router=IPv4Address("10.0.0.1"),
    ),
}
ISC_SUBNET = "subnet 10.0.0.0 netmask 255.255.255.0 {{\n  range 10.0.0.10 10.0.0.100;\n{body}}}\n"


def needs(binary: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not Path(binary).exists(), reason=f"{binary} not installed")


def check(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


# -- content: every format carries exactly the encoded routes ------------------------


@pytest.mark.parametrize("routes", ROUTE_SETS.values(), ids=ROUTE_SETS.keys())
def test_hex(routes: list[Route]) -> None:
    assert decode(bytes.fromhex(render("hex", routes))) == routes


@pytest.mark.parametrize("routes", ROUTE_SETS.values(), ids=ROUTE_SETS.keys())
def test_dnsmasq_lines(routes: list[Route]) -> None:
    line121, line249 = render("dnsmasq", routes).splitlines()
    pairs = line121.removeprefix("dhcp-option=option:classless-static-route,").split(",")
    assert [(str(r.destination), str(r.gateway)) for r in routes] == list(
        zip(pairs[0::2], pairs[1::2], strict=True)
    )
    raw = line249.removeprefix("dhcp-option=249,")
    assert decode(bytes(int(b, 16) for b in raw.split(":"))) == routes


def test_dnsmasq_tag_prefixes_both_lines() -> None:
    lines = render("dnsmasq", build_routes(), tag="meta").splitlines()
    assert len(lines) == 2
    assert all(line.startswith("dhcp-option=tag:meta,") for line in lines)


def isc_octets(text: str, name: str) -> bytes:
    match = re.search(rf"^option {name} ([\d, ]+);$", text, re.MULTILINE)
    assert match, text
    return bytes(int(b) for b in match.group(1).split(","))


@pytest.mark.parametrize("routes", ROUTE_SETS.values(), ids=ROUTE_SETS.keys())
def test_isc_values(routes: list[Route]) -> None:
    text = render("isc", routes)
    assert "code 121 = array of integer 8;" in text
    assert "code 249 = array of integer 8;" in text
    assert decode(isc_octets(text, "rfc3442-classless-static-routes")) == routes
    assert decode(isc_octets(text, "ms-classless-static-routes")) == routes


@pytest.mark.parametrize("routes", ROUTE_SETS.values(), ids=ROUTE_SETS.keys())
def test_kea_option_data(routes: list[Route]) -> None:
    options = json.loads(render("kea", routes))["option-data"]
    assert sorted(o["code"] for o in options) == [121, 249]
    for option in options:
        assert option["csv-format"] is False
        assert decode(bytes.fromhex(option["data"])) == routes


@pytest.mark.parametrize("routes", ROUTE_SETS.values(), ids=ROUTE_SETS.keys())
def test_networkd_send_options(routes: list[Route]) -> None:
    header, *lines = render("networkd", routes).splitlines()
    assert header == "[DHCPServer]"
    codes = []
    for line in lines:
        code, kind, escaped = line.removeprefix("SendOption=").split(":", 2)
        assert kind == "string"
        # networkd C-unescapes string data (NUL allowed); every byte is a \xHH escape.
        assert re.fullmatch(r"(\\x[0-9a-f]{2})+", escaped)
        assert decode(bytes(int(h, 16) for h in escaped.split("\\x")[1:])) == routes
        codes.append(int(code))
    assert codes == [121, 249]


def test_every_format_refuses_an_invalid_set() -> None:
    duplicate = build_routes() + build_routes()
    for name in RENDERERS:
        with pytest.raises(UserError, match="duplicate"):
            render(name, duplicate)


# -- the servers' own checkers ------------------------------------------------------


def dhcpd_check(tmp_path: Path, config: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "dhcpd.conf"
    conf.write_text(config)
    leases = tmp_path / "dhcpd.leases"
    leases.touch()
    pid = tmp_path / "dhcpd.pid"
    return check([DHCPD, "-4", "-t", "-cf", str(conf), "-lf", str(leases), "-pf", str(pid)])


def isc_config(helper_output: str) -> str:
    """Declarations at global scope, values inside the subnet, as an operator would."""
    lines = helper_output.splitlines(keepends=True)
    declarations = "".join(line for line in lines if " code " in line)
    values = "".join("  " + line for line in lines if " code " not in line)
    return declarations + ISC_SUBNET.format(body=values)


@needs(DHCPD)
@pytest.mark.parametrize("routes", ROUTE_SETS.values(), ids=ROUTE_SETS.keys())
def test_dhcpd_accepts_isc_output(tmp_path: Path, routes: list[Route]) -> None:
    res = dhcpd_check(tmp_path, isc_config(render("isc", routes)))
    assert res.returncode == 0, res.stderr


@needs(DHCPD)
def test_dhcpd_rejects_values_without_declaration(tmp_path: Path) -> None:
    output = render("isc", build_routes())
    without_declarations = "".join(
        line for line in output.splitlines(keepends=True) if " code " not in line
    )
    res = dhcpd_check(tmp_path, ISC_SUBNET.format(body=without_declarations))
    assert res.returncode != 0


def kea_check(tmp_path: Path, option_data: list[dict]) -> subprocess.CompletedProcess:
    config = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": []},
            "lease-database": {"type": "memfile", "persist": False},
            "subnet4": [
                {
                    "id": 1,
                    "subnet": "10.0.0.0/24",
                    "pools": [{"pool": "10.0.0.10 - 10.0.0.100"}],
                    "option-data": option_data,
                }
            ],
        }
    }
    path = tmp_path / "kea-dhcp4.json"
    path.write_text(json.dumps(config))
    return check([KEA_DHCP4, "-t", str(path)])


@needs(KEA_DHCP4)
@pytest.mark.parametrize("routes", ROUTE_SETS.values(), ids=ROUTE_SETS.keys())
def test_kea_accepts_kea_output(tmp_path: Path, routes: list[Route]) -> None:
    res = kea_check(tmp_path, json.loads(render("kea", routes))["option-data"])
    assert res.returncode == 0, res.stdout + res.stderr


@needs(KEA_DHCP4)
def test_kea_rejects_non_hex_data(tmp_path: Path) -> None:
    # Kea 2.2 has no text form for option 121: the reason the helper sends raw hex.
    options = json.loads(render("kea", build_routes()))["option-data"]
    options[0]["data"] = "169.254.169.254/32 - 0.0.0.0"
    res = kea_check(tmp_path, options)
    assert res.returncode != 0


def dnsmasq_check(tmp_path: Path, lines: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text("dhcp-range=set:meta,10.0.0.10,10.0.0.100,255.255.255.0,1h\n" + lines)
    return check([DNSMASQ, "--test", f"--conf-file={conf}"])


@needs(DNSMASQ)
@pytest.mark.parametrize("tag", [None, "meta"])
@pytest.mark.parametrize("routes", ROUTE_SETS.values(), ids=ROUTE_SETS.keys())
def test_dnsmasq_accepts_dnsmasq_output(
    tmp_path: Path, routes: list[Route], tag: str | None
) -> None:
    res = dnsmasq_check(tmp_path, render("dnsmasq", routes, tag=tag))
    assert res.returncode == 0, res.stderr


@needs(DNSMASQ)
def test_dnsmasq_rejects_a_misspelt_option(tmp_path: Path) -> None:
    lines = render("dnsmasq", build_routes()).replace("classless-static-route", "classless-route")
    res = dnsmasq_check(tmp_path, lines)
    assert res.returncode != 0
