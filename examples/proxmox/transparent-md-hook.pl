#!/usr/bin/perl
# Proxmox VE hookscript: bind VM VMID's metadata record to its tap at start; park it
# (kept, served to nobody) before start and at stop.
#
# Install:  cp /usr/share/transparent-md/proxmox-hook.pl \
#              /var/lib/vz/snippets/transparent-md-hook.pl   (from a checkout: examples/proxmox/)
#           chmod +x /var/lib/vz/snippets/transparent-md-hook.pl
#           qm set VMID --hookscript local:snippets/transparent-md-hook.pl
# The record's id is "pve-VMID" (create it parked, with the VM's MAC and bridge:
# `transparent-md instance add pve-VMID --mac MAC --bridge vmbr0 --parked ...`, or the
# admin API). Proxmox names the first NIC's tap "tap<VMID>i0". The binding names that
# tap as a link: a tap deleted and made again under the name is not served until bound.
# A failing post-start leaves the VM running; the message lands in the task log.
use strict;
use warnings;

my $api = $ENV{TMD_API} // '/run/transparent-md/tmd.sock';
# The install step writes its CLI path here; a checkout's copy falls back to PATH.
my $tmd = '/opt/transparent-md/venv/bin/transparent-md';
$tmd = 'transparent-md' unless -x $tmd;
my ($vmid, $phase) = @ARGV;
my $id = "pve-$vmid";

if ($phase eq 'post-start') {
    system($tmd, 'instance', 'bind', $id, '--port', "tap${vmid}i0",
           '--api', $api) == 0
        or die "transparent-md: could not bind $id to tap${vmid}i0\n";
} elsif ($phase eq 'pre-start' || $phase eq 'pre-stop' || $phase eq 'post-stop') {
    system($tmd, 'instance', 'park', $id, '--api', $api) == 0
        or warn "transparent-md: could not park $id\n";
}
exit(0);
