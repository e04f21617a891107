/* Maps shared by the port program and the reply program, and read by user space.
 * bcc rewrites map method calls only in its main file, so the loader joins these
 * headers and the programs into one unit (see transparent_md/datapath/programs.py).
 * Layouts here are mirrored in transparent_md/datapath/layout.py: change both. The
 * compile child compares the two after every compile and refuses to start on a
 * mismatch (transparent_md/datapath/contract.py). */
#ifndef TMD_MAPS_H
#define TMD_MAPS_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

/* Upper bound of shadow slots (one per guest identity). 65536 entries of 56 bytes is
 * 3.5 MiB of map memory; the configured prefix may allow fewer (see cfg.shadow_slots). */
#ifndef TMD_MAX_SLOTS
#define TMD_MAX_SLOTS 65536
#endif

/* Port configuration entries: one per attached port, plus proxy-ARP addresses. */
#define TMD_MAX_PORTS 16384
#define TMD_MAX_ARP_ANSWERS 16384
#define TMD_MAX_ND_ANSWERS 16384
/* MAC locks: bounded per port by cfg.port_mac_quota; this bounds the whole host. */
#define TMD_MAX_MAC_LOCKS 65536

#define TMD_CFG_ANSWER_METADATA_ARP 0x1 /* answer who-has 169.254.169.254 on every port */
#define TMD_CFG_MAC_LOCK 0x2            /* lock a MAC to the first port it asked from */

struct tmd_config {
	__be32 shadow_net;   /* shadow prefix, network order */
	__be32 shadow_mask;  /* its netmask, network order */
	__u32 md_ifindex;    /* requests are redirected out of this device (md0) */
	__u32 shadow_slots;  /* usable slots: 1 .. shadow_slots */
	__u8 md_mac[6];      /* MAC of md0's peer, where requests must land */
	__u8 arp_mac[6];     /* MAC we answer ARP with */
	__u32 flags;         /* TMD_CFG_* */
	__u32 port_identity_quota; /* identities (slots) a port may hold; 0: no limit */
	__u32 port_mac_quota;      /* MACs a port may lock; 0: no limit */
	__u64 syn_cost_ns;         /* 1 s / port SYN rate; 0: no SYN rate limit */
	__u64 syn_burst_ns;        /* burst * syn_cost_ns: how far a port may run ahead */
	__u64 slot_reuse_delay_ns; /* a freed slot waits this long before another identity */
};

/* Which metadata address a guest asked (tmd_guest_key.md_addr): IPv4, or one of the
 * two IPv6 addresses, which the reply must come from again. */
#define TMD_MD_ADDR_IPV4 0
#define TMD_MD_ADDR_EC2_IPV6 1   /* fd00:ec2::254 */
#define TMD_MD_ADDR_LINK_LOCAL 2 /* fe80::a9fe:a9fe */

/* A guest identity as seen on a port: the key that selects its shadow slot. An IPv4
 * guest has ip set and ip6 zero; an IPv6 guest has ip 0 and ip6 set, and md_addr says
 * which metadata address it asked (the reply comes from that one). */
struct tmd_guest_key {
	__u32 ifindex;
	__be32 ip;
	__u8 mac[6];
	__u8 md_addr;        /* TMD_MD_ADDR_* */
	__u8 pad;
	__u8 ip6[16];
};

/* The slot's identity is a MAC locked to another port (a copied MAC). */
#define TMD_SLOT_LOCKED_ELSEWHERE 0x1
/* The slot's identity is an IPv6 guest: its requests were translated to IPv4 on the
 * way in (NAT46), its replies are translated back. */
#define TMD_SLOT_IPV6 0x2
/* ... that asked fe80::a9fe:a9fe (else fd00:ec2::254): replies come from it. */
#define TMD_SLOT_LINK_LOCAL_MD 0x4
/* free_since_ns of a slot that is taken (the allocator claims it atomically). */
#define TMD_SLOT_TAKEN (~0ULL)

/* What a shadow slot stands for: read by the reply program and by user space.
 * ifindex 0 means free: replies to it are dropped and it resolves to nobody. */
struct tmd_slot {
	__u32 ifindex;
	__be32 ip;
	__u8 mac[6];
	__u8 gw_mac[6];      /* the destination MAC the guest used: replies come from it */
	__u32 flags;         /* TMD_SLOT_* */
	__u64 last_seen_ns;
	__u64 free_since_ns; /* TMD_SLOT_TAKEN, or when user space freed it (0: never used) */
	__u8 ip6[16];        /* the IPv6 guest's address (TMD_SLOT_IPV6), else zero */
};

struct tmd_port {
	char bridge[16];
	char name[16];
};

struct tmd_arp_key {
	__u32 ifindex;
	__be32 ip;
};

/* An IPv6 gateway address answered on one port (Neighbour Advertisements). */
struct tmd_nd_key {
	__u32 ifindex;
	__u8 ip6[16];
};

struct tmd_mac_key {
	__u8 mac[6];
	__u8 pad[2];
};

/* Per-port usage written only by the port program (atomic adds; the SYN bucket is a
 * plain store). User space writes it only when it (re)attaches the port. */
struct tmd_port_usage {
	__u64 identities_taken;
	__u64 macs_locked;
	__u64 syn_tat_ns;    /* the SYN bucket's theoretical arrival time (GCRA) */
};

/* Per-port releases written only by user space: "in use" is taken - released, so the
 * program and user space never read-modify-write the same word. */
struct tmd_port_released {
	__u64 identities_released;
	__u64 macs_unlocked;
};

/* What the programs did with a frame they kept (not a drop). */
enum tmd_event {
	TMD_EVENT_REQUEST_REDIRECTED = 0,
	TMD_EVENT_REPLY_REDIRECTED,
	TMD_EVENT_ARP_ANSWERED,
	TMD_EVENT_SLOT_ALLOCATED,     /* a new identity got a shadow slot */
	TMD_EVENT_FORGED_FLAGGED,     /* ... whose MAC is locked to another port */
	TMD_EVENT_NS_ANSWERED,        /* a Neighbour Solicitation answered in place */
	TMD_EVENT_MAX,
};

/* Why a frame was dropped: every drop is counted once, under one reason. */
enum tmd_drop {
	TMD_DROP_UNSERVED = 0,        /* to 169.254.169.254 but not plain TCP to port 80 */
	TMD_DROP_BAD_SOURCE,          /* source address nobody can answer (0/8, 127/8, multicast) */
	TMD_DROP_NOT_SYN,             /* no slot yet and not a SYN: only a SYN takes a slot */
	TMD_DROP_SYN_RATE,            /* the port's SYN bucket is empty */
	TMD_DROP_PORT_QUOTA,          /* the port holds its quota of identities */
	TMD_DROP_MAC_QUOTA,           /* a new MAC on a port holding its quota of MAC locks */
	TMD_DROP_NO_SLOT,             /* no free slot among the candidates tried */
	TMD_DROP_REWRITE_FAILED,      /* a checksum or store helper failed */
	TMD_DROP_STRAY,               /* sent to our ARP MAC but not to 169.254.169.254:80 */
	TMD_DROP_ARP_CLAIM,           /* ARP whose sender claims 169.254.169.254 or a gateway */
	TMD_DROP_REPLY_UNSERVED,      /* on md0 but not a TCP reply to a shadow address */
	TMD_DROP_REPLY_NO_SLOT,       /* reply to a shadow address with no live slot */
	TMD_DROP_TAGGED_ARP_CLAIM,    /* ARP_CLAIM inside a VLAN or priority (VID 0) tag */
	TMD_DROP_TAGGED_METADATA,     /* tagged frame to 169.254.169.254: only untagged is served */
	TMD_DROP_TOO_MANY_TAGS,       /* more than two VLAN tags: what they carry is not read */
	TMD_DROP_ND_CLAIM,            /* NS/NA whose source or NA target is a metadata IPv6
				       * address or a gateway we answer for, or DAD for one */
	TMD_DROP_TAGGED_ND_CLAIM,     /* ND_CLAIM inside a VLAN or priority (VID 0) tag */
	TMD_DROP_MAX,
};

BPF_ARRAY(tmd_config, struct tmd_config, 1);
BPF_HASH(tmd_ports, __u32, struct tmd_port, TMD_MAX_PORTS);
BPF_HASH(tmd_arp, struct tmd_arp_key, __u8, TMD_MAX_ARP_ANSWERS);
BPF_HASH(tmd_nd, struct tmd_nd_key, __u8, TMD_MAX_ND_ANSWERS);
/* A plain hash, not LRU: an entry is removed only by the slot releaser, never evicted. */
BPF_HASH(tmd_by_guest, struct tmd_guest_key, __u32, TMD_MAX_SLOTS);
/* Mappable: the slot releaser reads the whole table every second straight from memory
 * (a batch lookup of 65,536 entries cost it 15 ms of copying per round). */
BPF_F_TABLE("array", int, struct tmd_slot, tmd_slots, TMD_MAX_SLOTS, BPF_F_MMAPABLE);
BPF_ARRAY(tmd_next_slot, __u64, 1);
BPF_HASH(tmd_mac_locks, struct tmd_mac_key, __u32, TMD_MAX_MAC_LOCKS);
BPF_HASH(tmd_port_usage, __u32, struct tmd_port_usage, TMD_MAX_PORTS);
BPF_HASH(tmd_port_released, __u32, struct tmd_port_released, TMD_MAX_PORTS);
BPF_PERCPU_ARRAY(tmd_events, __u64, TMD_EVENT_MAX);
BPF_PERCPU_ARRAY(tmd_drops, __u64, TMD_DROP_MAX);

static __always_inline void tmd_event(int event)
{
	__u32 key = event;
	__u64 *value = tmd_events.lookup(&key);
	if (value)
		*value += 1;
}

/* Count the drop under its one reason and return the verdict: `return tmd_drop(R);`. */
static __always_inline int tmd_drop(int reason)
{
	__u32 key = reason;
	__u64 *value = tmd_drops.lookup(&key);
	if (value)
		*value += 1;
	return TC_ACT_SHOT;
}

static __always_inline struct tmd_config *tmd_cfg(void)
{
	__u32 zero = 0;
	return tmd_config.lookup(&zero);
}

#endif
