/* tc clsact ingress on every guest-facing bridge port.
 *
 * - TCP to 169.254.169.254:80: give the guest identity (port, IP, MAC) a shadow slot,
 *   rewrite the source to the slot's shadow address and redirect the frame out of md0,
 *   whose peer holds 169.254.169.254 and the responder's socket. A guest is assumed
 *   hostile: only a SYN may take a slot, a port holds at most its quota of identities
 *   and of locked MACs, and its SYNs pass a token bucket.
 * - ARP who-has 169.254.169.254 (route-based mode) or a gateway address configured for
 *   this port (segments with no router): answered in place, back out of the port. Any
 *   ARP whose sender claims one of those addresses is dropped, whatever its ar_hrd and
 *   however it is tagged: it would poison the neighbours' caches.
 * - VLAN-tagged frames (802.1Q or 802.1ad, one or two tags, VID 0 priority tags
 *   included: Linux takes those as untagged) are never served: one aimed at
 *   169.254.169.254 is dropped, not flooded; more than two tags are dropped unread.
 * - Anything else addressed to 169.254.169.254 is dropped: that address is ours.
 * - Anything else sent to the MAC we answer ARP with is dropped too: a guest on a
 *   routerless segment sends all its off-link traffic there, and the bridge, which
 *   knows no such MAC, would flood it to every other guest.
 * - Everything else goes on to the bridge untouched.
 * Every drop is counted once, under its reason (enum tmd_drop).
 */
#include "tmd_maps.h"
#include "tmd_packet.h"

/* Free slots looked at per new identity before giving up (NO_SLOT): the round-robin
 * ticket makes the candidates the least recently handed out, the likeliest free. */
#define TMD_SLOT_CANDIDATES 8
/* Refresh a slot's last_seen at most this often: a write per packet costs cache lines.
 * The slot releaser's grace (2 s) is longer, so a live identity always looks live. */
#define TMD_LAST_SEEN_REFRESH_NS 1000000000ULL

/* A guest whose ARP (any op: request, reply, gratuitous) says it is 169.254.169.254 or
 * a gateway address we answer for on this port is lying. */
static __always_inline int claims_ours(__u32 ifindex, __be32 sender)
{
	if (sender == TMD_METADATA_IP)
		return 1;
	struct tmd_arp_key claimed = {};
	claimed.ifindex = ifindex;
	claimed.ip = sender;
	return tmd_arp.lookup(&claimed) != 0;
}

static __always_inline int answer_arp(struct __sk_buff *skb, struct tmd_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arphdr *arp = (void *)(eth + 1);
	struct tmd_arp_eth *body = (void *)(arp + 1);

	if ((void *)(body + 1) > data_end || !tmd_arp_is_ipv4(arp))
		return TC_ACT_OK;
	if (claims_ours(skb->ifindex, body->spa))
		return tmd_drop(TMD_DROP_ARP_CLAIM);

	if (arp->ar_op != bpf_htons(ARPOP_REQUEST))
		return TC_ACT_OK;
	/* A probe (sender 0.0.0.0) or gratuitous ARP needs no answer from us. */
	if (body->spa == 0 || body->spa == body->tpa)
		return TC_ACT_OK;

	__be32 target = body->tpa;
	if (!(target == TMD_METADATA_IP && (cfg->flags & TMD_CFG_ANSWER_METADATA_ARP))) {
		struct tmd_arp_key key = {};
		key.ifindex = skb->ifindex;
		key.ip = target;
		if (!tmd_arp.lookup(&key))
			return TC_ACT_OK;
	}

	/* Turn the request into the reply in place. */
	tmd_mac_copy(eth->h_dest, body->sha);
	tmd_mac_copy(eth->h_source, cfg->arp_mac);
	arp->ar_op = bpf_htons(ARPOP_REPLY);
	tmd_mac_copy(body->tha, body->sha);
	body->tpa = body->spa;
	tmd_mac_copy(body->sha, cfg->arp_mac);
	body->spa = target;
	tmd_event(TMD_EVENT_ARP_ANSWERED);
	return bpf_redirect(skb->ifindex, 0);
}

/* This port's usage entry, created on first use (user space resets it on attach). */
static __always_inline struct tmd_port_usage *port_usage(__u32 ifindex)
{
	struct tmd_port_usage *usage = tmd_port_usage.lookup(&ifindex);
	if (usage)
		return usage;
	struct tmd_port_usage fresh = {};
	tmd_port_usage.insert(&ifindex, &fresh);
	return tmd_port_usage.lookup(&ifindex);
}

/* The port's SYN bucket as a GCRA: one u64 per port, no division on the data path.
 * Two CPUs may read the same arrival time and both pass: a few SYNs over the burst at
 * worst, which is acceptable for a flood guard and cheaper than a lock. */
static __always_inline int syn_allowed(struct tmd_config *cfg, struct tmd_port_usage *usage,
				       __u64 now)
{
	__u64 cost = cfg->syn_cost_ns;
	if (cost == 0)
		return 1;
	__u64 tat = usage->syn_tat_ns;
	if (tat < now)
		tat = now;
	if (tat + cost - now > cfg->syn_burst_ns)
		return 0;
	usage->syn_tat_ns = tat + cost;
	return 1;
}

static __always_inline __u64 in_use(__u64 taken, __u64 released)
{
	/* Saturating: a port re-attached while old slots of it were still held may see
	 * more releases than takes for a while; that errs towards serving. */
	return taken > released ? taken - released : 0;
}

/* The live slot of this identity, refreshed; 0 when it has none. */
static __always_inline __u32 known_slot(struct tmd_guest_key *key, const __u8 *gw_mac,
					__u64 now)
{
	__u32 *known = tmd_by_guest.lookup(key);
	if (!known)
		return 0;
	__u32 slot = *known;
	struct tmd_slot *entry = tmd_slots.lookup(&slot);
	if (!entry || entry->ifindex != key->ifindex || entry->ip != key->ip ||
	    !tmd_mac_eq(entry->mac, key->mac))
		return 0;
	if (!tmd_mac_eq(entry->gw_mac, gw_mac))
		tmd_mac_copy(entry->gw_mac, gw_mac);
	if (now - entry->last_seen_ns > TMD_LAST_SEEN_REFRESH_NS)
		entry->last_seen_ns = now;
	return slot;
}

/* Give a new identity a slot; on refusal returns 0 with the drop reason in *reason. */
static __always_inline __u32 new_slot(struct tmd_config *cfg, struct tmd_guest_key *key,
				      const __u8 *gw_mac, struct tmd_port_usage *usage,
				      __u64 now, int *reason)
{
	__u32 ifindex = key->ifindex;
	struct tmd_port_released *released = tmd_port_released.lookup(&ifindex);
	__u64 identities_released = released ? released->identities_released : 0;
	__u64 macs_unlocked = released ? released->macs_unlocked : 0;

	if (cfg->port_identity_quota &&
	    in_use(usage->identities_taken, identities_released) >= cfg->port_identity_quota) {
		*reason = TMD_DROP_PORT_QUOTA;
		return 0;
	}

	/* A MAC is locked to the first port it got a slot from. From another port it still
	 * gets a slot, flagged, so the responder can refuse it by name and log it. */
	struct tmd_mac_key mac_key = {};
	tmd_mac_copy(mac_key.mac, key->mac);
	__u32 *locked_to = (cfg->flags & TMD_CFG_MAC_LOCK) ? tmd_mac_locks.lookup(&mac_key) : 0;
	__u32 flags = 0;
	int lock_it = 0;
	if (!(cfg->flags & TMD_CFG_MAC_LOCK)) {
		/* --no-mac-lock: the operator relies on the hypervisor's own anti-spoofing. */
	} else if (locked_to) {
		if (*locked_to != ifindex)
			flags = TMD_SLOT_LOCKED_ELSEWHERE;
	} else {
		if (cfg->port_mac_quota &&
		    in_use(usage->macs_locked, macs_unlocked) >= cfg->port_mac_quota) {
			*reason = TMD_DROP_MAC_QUOTA;
			return 0;
		}
		lock_it = 1;
	}

	__u32 zero = 0;
	__u64 *next = tmd_next_slot.lookup(&zero);
	if (!next || cfg->shadow_slots == 0) {
		*reason = TMD_DROP_NO_SLOT;
		return 0;
	}
	/* A slot is free once user space released it (no socket of the responder talks to
	 * it any more) and the reuse delay has passed since: the responder may still cache
	 * the slot's old identity until then. The claim is a compare-and-swap, so two CPUs
	 * never hand one slot to two identities. */
	__u32 chosen = 0;
	for (int attempt = 0; attempt < TMD_SLOT_CANDIDATES && !chosen; attempt++) {
		__u64 ticket = __sync_fetch_and_add(next, 1);
		__u32 slot = (__u32)(ticket % cfg->shadow_slots) + 1;
		struct tmd_slot *entry = tmd_slots.lookup(&slot);
		if (!entry)
			continue;
		__u64 free_since = entry->free_since_ns;
		if (free_since == TMD_SLOT_TAKEN ||
		    (free_since && now - free_since < cfg->slot_reuse_delay_ns))
			continue;
		if (__sync_val_compare_and_swap(&entry->free_since_ns, free_since,
						TMD_SLOT_TAKEN) == free_since)
			chosen = slot;
	}
	if (!chosen) {
		*reason = TMD_DROP_NO_SLOT;
		return 0;
	}
	/* Map updates stay outside the loop: clang would hoist the helper address into a
	 * register there and emit an indirect call the verifier rejects. */
	struct tmd_slot fresh = {};
	fresh.ifindex = ifindex;
	fresh.ip = key->ip;
	tmd_mac_copy(fresh.mac, key->mac);
	tmd_mac_copy(fresh.gw_mac, gw_mac);
	fresh.flags = flags;
	fresh.last_seen_ns = now;
	fresh.free_since_ns = TMD_SLOT_TAKEN;
	tmd_slots.update(&chosen, &fresh);
	tmd_by_guest.update(key, &chosen);
	__sync_fetch_and_add(&usage->identities_taken, 1);
	if (lock_it && tmd_mac_locks.insert(&mac_key, &ifindex) == 0)
		__sync_fetch_and_add(&usage->macs_locked, 1);
	tmd_event(TMD_EVENT_SLOT_ALLOCATED);
	if (flags & TMD_SLOT_LOCKED_ELSEWHERE)
		tmd_event(TMD_EVENT_FORGED_FLAGGED);
	return chosen;
}

/* A SYN of an identity that already has a slot takes its MAC's lock if nobody holds it
 * (the operator released it, or its port went with no other port waiting for it): the
 * responder serves a slot only while the slot's port holds the MAC's lock. */
static __always_inline void lock_if_free(struct tmd_config *cfg, struct tmd_guest_key *key,
					 struct tmd_port_usage *usage)
{
	if (!(cfg->flags & TMD_CFG_MAC_LOCK))
		return;
	struct tmd_mac_key mac_key = {};
	tmd_mac_copy(mac_key.mac, key->mac);
	if (tmd_mac_locks.lookup(&mac_key))
		return;
	__u32 ifindex = key->ifindex;
	struct tmd_port_released *released = tmd_port_released.lookup(&ifindex);
	__u64 macs_unlocked = released ? released->macs_unlocked : 0;
	if (cfg->port_mac_quota &&
	    in_use(usage->macs_locked, macs_unlocked) >= cfg->port_mac_quota)
		return;
	if (tmd_mac_locks.insert(&mac_key, &ifindex) == 0)
		__sync_fetch_and_add(&usage->macs_locked, 1);
}

static __always_inline int intercept_ipv4(struct __sk_buff *skb, struct tmd_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK; /* truncated: not ours to judge, the stack drops it */
	if (ip->daddr != TMD_METADATA_IP)
		return TC_ACT_OK;

	/* From here on the frame is addressed to us: serve it or drop it. */
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_TCP ||
	    (ip->frag_off & bpf_htons(TMD_IP_MF | TMD_IP_OFFSET)))
		return tmd_drop(TMD_DROP_UNSERVED);
	struct tcphdr *tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end || tcp->dest != TMD_METADATA_PORT)
		return tmd_drop(TMD_DROP_UNSERVED);
	if (!tmd_unicast_source(ip->saddr))
		return tmd_drop(TMD_DROP_BAD_SOURCE);
	/* A connection opener: SYN alone (a SYN with ACK, RST or FIN set opens nothing). */
	int opens = tcp->syn && !tcp->ack && !tcp->rst && !tcp->fin;

	struct tmd_guest_key key = {};
	key.ifindex = skb->ifindex;
	key.ip = ip->saddr;
	tmd_mac_copy(key.mac, eth->h_source);
	__u8 gw_mac[ETH_ALEN];
	tmd_mac_copy(gw_mac, eth->h_dest);
	__u64 now = bpf_ktime_get_ns();

	struct tmd_port_usage *usage = 0;
	if (opens) {
		usage = port_usage(key.ifindex);
		if (!usage)
			return tmd_drop(TMD_DROP_NO_SLOT);
		if (!syn_allowed(cfg, usage, now))
			return tmd_drop(TMD_DROP_SYN_RATE);
	}
	__u32 slot = known_slot(&key, gw_mac, now);
	if (slot && usage)
		lock_if_free(cfg, &key, usage);
	if (!slot) {
		if (!usage)
			return tmd_drop(TMD_DROP_NOT_SYN);
		int reason = TMD_DROP_NO_SLOT;
		slot = new_slot(cfg, &key, gw_mac, usage, now, &reason);
		if (!slot)
			return tmd_drop(reason);
	}
	__be32 shadow = cfg->shadow_net | bpf_htonl(slot);
	__be32 guest_ip = key.ip;

	/* MACs first, with direct writes, while the packet pointers are valid. */
	tmd_mac_copy(eth->h_dest, cfg->md_mac);
	if (tmd_rewrite_addr(skb, TMD_IP_SRC_OFF, guest_ip, shadow))
		return tmd_drop(TMD_DROP_REWRITE_FAILED);
	tmd_event(TMD_EVENT_REQUEST_REDIRECTED);
	return bpf_redirect(cfg->md_ifindex, 0);
}

/* A tagged frame is the bridge's VLAN business unless it is aimed at us: then it is
 * dropped, never served (a reply would have to carry the tag back) and never passed
 * (the bridge would flood it to every guest, and a guest takes a VID 0 tag as none). */
static __always_inline int judge_tagged(struct __sk_buff *skb, const struct tmd_frame *f)
{
	if (f->proto == bpf_htons(ETH_P_IP)) {
		__be32 daddr;
		if (bpf_skb_load_bytes(skb, f->l3_off + offsetof(struct iphdr, daddr), &daddr,
				       sizeof(daddr)))
			return TC_ACT_OK; /* cut short: no stack takes it either */
		if (daddr == TMD_METADATA_IP)
			return tmd_drop(TMD_DROP_TAGGED_METADATA);
		return TC_ACT_OK;
	}
	if (f->proto == bpf_htons(ETH_P_ARP)) {
		struct tmd_arp_ipv4 arp;
		if (bpf_skb_load_bytes(skb, f->l3_off, &arp, sizeof(arp)) ||
		    !tmd_arp_is_ipv4(&arp.hdr))
			return TC_ACT_OK;
		if (claims_ours(skb->ifindex, arp.body.spa))
			return tmd_drop(TMD_DROP_TAGGED_ARP_CLAIM);
		if (arp.body.tpa == TMD_METADATA_IP)
			return tmd_drop(TMD_DROP_TAGGED_METADATA);
	}
	return TC_ACT_OK;
}

/* Our ARP MAC belongs to no port of the bridge: whatever reaches it unserved would be
 * flooded as unknown unicast. */
static __always_inline int drop_if_sent_to_us(struct __sk_buff *skb, struct tmd_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end || !tmd_mac_eq(eth->h_dest, cfg->arp_mac))
		return TC_ACT_OK;
	return tmd_drop(TMD_DROP_STRAY);
}

int port_ingress(struct __sk_buff *skb)
{
	struct tmd_config *cfg = tmd_cfg();
	if (!cfg || cfg->md_ifindex == 0)
		return TC_ACT_OK;
	struct tmd_frame frame = {};
	if (tmd_parse_frame(skb, &frame))
		return TC_ACT_OK; /* shorter than an Ethernet header: the stack drops it */
	if (frame.too_deep)
		return tmd_drop(TMD_DROP_TOO_MANY_TAGS);
	int verdict = TC_ACT_OK;
	if (frame.tagged)
		verdict = judge_tagged(skb, &frame);
	else if (frame.proto == bpf_htons(ETH_P_IP))
		verdict = intercept_ipv4(skb, cfg);
	else if (frame.proto == bpf_htons(ETH_P_ARP))
		verdict = answer_arp(skb, cfg);
	if (verdict != TC_ACT_OK)
		return verdict;
	return drop_if_sent_to_us(skb, cfg);
}
