"""The VM tests' pure parts, without root or qemu: the image recipe's files and cache
name, SMBIOS arguments, the console report's parsing, the SLAAC address a guest forms."""

from __future__ import annotations

import os

from tests.vm import cloud_vm
from tests.vm.cloud_lab import slaac_address
from transparent_md.lab import vm_image


def test_slaac_address_is_the_one_a_booted_debian_vm_formed():
    # Seen on an IPv6-only VM's console: fd00:2::5054:ff:fe24:2 for 52:54:00:24:00:02.
    assert slaac_address("fd00:2::", "52:54:00:24:00:02") == "fd00:2::5054:ff:fe24:2"


def test_smbios_doubles_commas_qemu_would_split_on():
    argv = cloud_vm.Smbios(product="P", serial="a,b;c").argv()
    assert argv == ["-smbios", "type=1,manufacturer=QEMU,product=P,serial=a,,b;c"]


def test_the_report_is_read_between_its_markers_whatever_the_serial_line_adds():
    console = "\r\n".join([
        "[  1.0] kernel noise", vm_image.REPORT_BEGIN, "hostname: vm-1",
        "keys: ssh-ed25519 AAAA one|ssh-ed25519 BBBB two|",
        'status: { "v1": { "datasource": "DataSourceGCE", "init": {} }}',
        "addr: 2: ens2 inet 10.0.0.5/24", "log: a warning", vm_image.REPORT_END, "tail",
    ])
    report = cloud_vm.parse_report(console)
    assert report.fields["hostname"] == "vm-1"
    assert report.keys == ["ssh-ed25519 AAAA one", "ssh-ed25519 BBBB two"]
    assert report.datasource == "DataSourceGCE"
    assert report.addresses == ["2: ens2 inet 10.0.0.5/24"] and report.log == ["a warning"]
    assert cloud_vm.parse_report("no report: the VM hung") is None


def test_the_cached_image_is_named_by_the_recipe_under_the_chosen_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(vm_image.CACHE_ENV, str(tmp_path))
    path = vm_image.image_path()
    assert path.parent == tmp_path and vm_image.recipe_key() in path.name
    assert path.match(vm_image.IMAGE_PATTERN)
    monkeypatch.setattr(vm_image, "PACKAGES", (*vm_image.PACKAGES, "curl"))
    assert vm_image.image_path() != path  # a changed recipe is another image


def test_configure_writes_the_report_unit_and_masks(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").write_text("nameserver 192.0.2.1\n")  # the builder's
    vm_image.configure(tmp_path)
    wants = tmp_path / "etc/systemd/system/cloud-init.target.wants/tmd-lab-report.service"
    assert os.readlink(wants) == "/etc/systemd/system/tmd-lab-report.service"
    script = tmp_path / "usr/local/sbin/tmd-lab-report"
    assert os.access(script, os.X_OK) and vm_image.REPORT_END in script.read_text()
    for unit in vm_image.MASKED_UNITS:
        assert os.readlink(tmp_path / "etc/systemd/system" / unit) == "/dev/null"
    assert not (tmp_path / "etc/resolv.conf").exists()
    assert (tmp_path / "etc/machine-id").read_text() == ""
