/* Maps shared by the port program and the reply program, and read by user space.
 * bcc rewrites map method calls only in its main file, so the loader joins these
 * headers and the programs into one unit (see transparent_md/datapath/programs.py).
 * Layouts here are mirrored in transparent_md/datapath/layout.py: change both. */
#ifndef TMD_MAPS_H
#define TMD_MAPS_H

#include <uapi/linux/bpf.h>

/* Upper bound of shadow slots (one per guest identity). 65536 entries of 32 bytes is
 * 2 MiB of map memory; the configured prefix may allow fewer (see cfg.shadow_slots). */
#ifndef TMD_MAX_SLOTS
#define TMD_MAX_SLOTS 65536
#endif

/* Port configuration entries: one per attached port, plus proxy-ARP addresses. */
#define TMD_MAX_PORTS 16384
#define TMD_MAX_ARP_ANSWERS 16384

#define TMD_CFG_ANSWER_METADATA_ARP 0x1 /* answer who-has 169.254.169.254 on every port */

struct tmd_config {
	__be32 shadow_net;   /* shadow prefix, network order */
	__be32 shadow_mask;  /* its netmask, network order */
	__u32 md_ifindex;    /* requests are redirected out of this device (md0) */
	__u32 shadow_slots;  /* usable slots: 1 .. shadow_slots */
	__u8 md_mac[6];      /* MAC of md0's peer, where requests must land */
	__u8 arp_mac[6];     /* MAC we answer ARP with */
	__u32 flags;         /* TMD_CFG_* */
	__u64 slot_hold_ns;  /* a slot seen more recently than this is never reused */
};

/* A guest identity as seen on a port: the key that selects its shadow slot. */
struct tmd_guest_key {
	__u32 ifindex;
	__be32 ip;
	__u8 mac[6];
	__u8 pad[2];
};

/* What a shadow slot stands for: read by the reply program and by user space. */
struct tmd_slot {
	__u32 ifindex;
	__be32 ip;
	__u8 mac[6];
	__u8 gw_mac[6];      /* the destination MAC the guest used: replies come from it */
	__u32 pad;
	__u64 last_seen_ns;
};

struct tmd_port {
	char bridge[16];
	char name[16];
};

struct tmd_arp_key {
	__u32 ifindex;
	__be32 ip;
};

enum tmd_stat {
	TMD_STAT_REQUEST_REDIRECTED = 0,
	TMD_STAT_REPLY_REDIRECTED,
	TMD_STAT_ARP_ANSWERED,
	TMD_STAT_METADATA_DROPPED,   /* to 169.254.169.254 but not something we serve */
	TMD_STAT_REPLY_DROPPED,      /* reply with no live slot */
	TMD_STAT_NO_SLOT,            /* every candidate slot was busy */
	TMD_STAT_STRAY_DROPPED,      /* sent to our ARP MAC but not to 169.254.169.254:80 */
	TMD_STAT_MAX,
};

BPF_ARRAY(tmd_config, struct tmd_config, 1);
BPF_HASH(tmd_ports, __u32, struct tmd_port, TMD_MAX_PORTS);
BPF_HASH(tmd_arp, struct tmd_arp_key, __u8, TMD_MAX_ARP_ANSWERS);
BPF_TABLE("lru_hash", struct tmd_guest_key, __u32, tmd_by_guest, TMD_MAX_SLOTS);
BPF_ARRAY(tmd_slots, struct tmd_slot, TMD_MAX_SLOTS);
BPF_ARRAY(tmd_next_slot, __u64, 1);
BPF_PERCPU_ARRAY(tmd_stats, __u64, TMD_STAT_MAX);

static __always_inline void tmd_count(int stat)
{
	__u32 key = stat;
	__u64 *value = tmd_stats.lookup(&key);
	if (value)
		*value += 1;
}

static __always_inline struct tmd_config *tmd_cfg(void)
{
	__u32 zero = 0;
	return tmd_config.lookup(&zero);
}

#endif
