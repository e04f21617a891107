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
 * - IPv6 (see docs/how-it-works.md, "IPv6"): TCP to [fd00:ec2::254]:80 or
 *   [fe80::a9fe:a9fe]:80 takes a slot the same way, keyed by the guest's IPv6 address,
 *   and is translated to IPv4 from the slot's shadow address (NAT46): the responder
 *   sees an IPv4 peer like any other. Neighbour Solicitations for those addresses (and
 *   for IPv6 gateways configured for the port) are answered in place; any NS or NA
 *   that speaks for one of them is dropped.
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

/* The slot flags that follow from the key: IPv6, and which IPv6 address it asked. */
#define TMD_SLOT_FAMILY_FLAGS (TMD_SLOT_IPV6 | TMD_SLOT_LINK_LOCAL_MD)
static __always_inline __u32 slot_family_flags(const struct tmd_guest_key *key)
{
	if (key->md_addr == TMD_MD_ADDR_IPV4)
		return 0;
	return TMD_SLOT_IPV6 |
	       (key->md_addr == TMD_MD_ADDR_LINK_LOCAL ? TMD_SLOT_LINK_LOCAL_MD : 0);
}

static __always_inline int tmd_ip6_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
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
	    !tmd_mac_eq(entry->mac, key->mac) || !tmd_ip6_eq(entry->ip6, key->ip6) ||
	    (entry->flags & TMD_SLOT_FAMILY_FLAGS) != slot_family_flags(key))
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
	__u32 flags = slot_family_flags(key);
	int lock_it = 0;
	if (!(cfg->flags & TMD_CFG_MAC_LOCK)) {
		/* --no-mac-lock: the operator relies on the hypervisor's own anti-spoofing. */
	} else if (locked_to) {
		if (*locked_to != ifindex)
			flags |= TMD_SLOT_LOCKED_ELSEWHERE;
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
	__builtin_memcpy(fresh.ip6, key->ip6, sizeof(fresh.ip6));
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

/* The shadow slot of the identity in *key, taken now if it has none and `opens` (a SYN
 * alone) lets it; 0 with the drop reason in *reason when it may not be served. */
static __always_inline __u32 guest_slot(struct tmd_config *cfg, struct tmd_guest_key *key,
					const __u8 *gw_mac, int opens, int *reason)
{
	__u64 now = bpf_ktime_get_ns();
	struct tmd_port_usage *usage = 0;
	if (opens) {
		usage = port_usage(key->ifindex);
		if (!usage) {
			*reason = TMD_DROP_NO_SLOT;
			return 0;
		}
		if (!syn_allowed(cfg, usage, now)) {
			*reason = TMD_DROP_SYN_RATE;
			return 0;
		}
	}
	__u32 slot = known_slot(key, gw_mac, now);
	if (slot && usage)
		lock_if_free(cfg, key, usage);
	if (slot)
		return slot;
	if (!usage) {
		*reason = TMD_DROP_NOT_SYN;
		return 0;
	}
	*reason = TMD_DROP_NO_SLOT;
	return new_slot(cfg, key, gw_mac, usage, now, reason);
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
	int reason = 0;
	__u32 slot = guest_slot(cfg, &key, gw_mac, opens, &reason);
	if (!slot)
		return tmd_drop(reason);
	__be32 shadow = cfg->shadow_net | bpf_htonl(slot);
	__be32 guest_ip = key.ip;

	/* MACs first, with direct writes, while the packet pointers are valid. */
	tmd_mac_copy(eth->h_dest, cfg->md_mac);
	if (tmd_rewrite_addr(skb, TMD_IP_SRC_OFF, guest_ip, shadow))
		return tmd_drop(TMD_DROP_REWRITE_FAILED);
	tmd_event(TMD_EVENT_REQUEST_REDIRECTED);
	return bpf_redirect(cfg->md_ifindex, 0);
}

/* An IPv6 address we answer Neighbour Solicitations for on this port: a metadata
 * address (1) or a gateway configured for the port (2); 0 for anyone else's. */
static __always_inline int ours6(__u32 ifindex, const __be32 *addr)
{
	if (tmd_md6_kind(addr))
		return 1;
	struct tmd_nd_key key = {};
	key.ifindex = ifindex;
	__builtin_memcpy(key.ip6, addr, sizeof(key.ip6));
	return tmd_nd.lookup(&key) ? 2 : 0;
}

/* Answer a Neighbour Solicitation in place: the same frame, turned into the
 * Advertisement (our ARP MAC as the target's link-layer address), back out of the port.
 * `with_option`: the solicitation carried exactly one source link-layer address option,
 * which becomes the target link-layer address option; without it the advertisement has
 * none (a unicast solicitation needs none, RFC 4861 section 7.2.4). */
static __always_inline int advertise(struct __sk_buff *skb, struct tmd_config *cfg,
				     int with_option, int router)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct tmd_nd_msg *ns = (void *)(ip6 + 1);
	if ((void *)(ns + 1) > data_end)
		return TC_ACT_OK;

	struct tmd_ip6_pseudo pseudo = {};
	__builtin_memcpy(pseudo.saddr, ns->target, sizeof(pseudo.saddr));
	__builtin_memcpy(pseudo.daddr, ip6->saddr.in6_u.u6_addr32, sizeof(pseudo.daddr));
	struct {
		struct tmd_nd_msg msg;
		struct tmd_nd_lladdr option;
	} na = {};
	na.msg.type = TMD_ND_ADVERT;
	na.msg.flags = TMD_NA_SOLICITED | TMD_NA_OVERRIDE | (router ? TMD_NA_ROUTER : 0);
	__builtin_memcpy(na.msg.target, ns->target, sizeof(na.msg.target));
	na.option.type = TMD_ND_OPT_TARGET_LLADDR;
	na.option.len = 1;
	tmd_mac_copy(na.option.mac, cfg->arp_mac);

	/* Direct writes while the packet pointers are valid: Ethernet and IPv6 headers. */
	tmd_mac_copy(eth->h_dest, eth->h_source);
	tmd_mac_copy(eth->h_source, cfg->arp_mac);
	__builtin_memcpy(ip6->daddr.in6_u.u6_addr32, pseudo.daddr, sizeof(pseudo.daddr));
	__builtin_memcpy(ip6->saddr.in6_u.u6_addr32, pseudo.saddr, sizeof(pseudo.saddr));
	ip6->hop_limit = TMD_ND_HOP_LIMIT;

	pseudo.nexthdr = bpf_htonl(IPPROTO_ICMPV6);
	__s64 sum;
	if (with_option) {
		pseudo.len = bpf_htonl(sizeof(na));
		sum = bpf_csum_diff(0, 0, (__be32 *)&pseudo, sizeof(pseudo), 0);
		sum = bpf_csum_diff(0, 0, (__be32 *)&na, sizeof(na), sum);
		na.msg.check = tmd_csum_fold(sum);
		if (bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(struct ipv6hdr), &na, sizeof(na), 0))
			return tmd_drop(TMD_DROP_REWRITE_FAILED);
	} else {
		pseudo.len = bpf_htonl(sizeof(na.msg));
		sum = bpf_csum_diff(0, 0, (__be32 *)&pseudo, sizeof(pseudo), 0);
		sum = bpf_csum_diff(0, 0, (__be32 *)&na.msg, sizeof(na.msg), sum);
		na.msg.check = tmd_csum_fold(sum);
		if (bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(struct ipv6hdr), &na.msg,
					sizeof(na.msg), 0))
			return tmd_drop(TMD_DROP_REWRITE_FAILED);
	}
	tmd_event(TMD_EVENT_NS_ANSWERED);
	return bpf_redirect(skb->ifindex, 0);
}

/* Neighbour Discovery on a port: answer solicitations for our addresses, drop any NS or
 * NA that speaks for them (it would poison the neighbours' caches, or the guest's own
 * duplicate address detection would take our address). TC_ACT_OK: not ours to judge. */
static __always_inline int judge_nd(struct __sk_buff *skb, struct tmd_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct tmd_nd_msg *nd = (void *)(ip6 + 1);
	if ((void *)(nd + 1) > data_end)
		return TC_ACT_OK;
	if (nd->type != TMD_ND_SOLICIT && nd->type != TMD_ND_ADVERT)
		return TC_ACT_OK;
	if (ours6(skb->ifindex, ip6->saddr.in6_u.u6_addr32))
		return tmd_drop(TMD_DROP_ND_CLAIM);
	__be32 target[4];
	__builtin_memcpy(target, nd->target, sizeof(target));
	int kind = ours6(skb->ifindex, target);
	if (!kind)
		return TC_ACT_OK;
	if (nd->type == TMD_ND_ADVERT)
		return tmd_drop(TMD_DROP_ND_CLAIM);
	/* Duplicate address detection for our address: the guest is about to claim it. */
	if (tmd_ip6_zero(ip6->saddr.in6_u.u6_addr32))
		return tmd_drop(TMD_DROP_ND_CLAIM);
	if (kind == 1 && !(cfg->flags & TMD_CFG_ANSWER_METADATA_ARP))
		return TC_ACT_OK;
	/* RFC 4861: a solicitation that may have crossed a router is not one. */
	if (ip6->hop_limit != TMD_ND_HOP_LIMIT || nd->code != 0)
		return TC_ACT_OK;
	__u16 len = bpf_ntohs(ip6->payload_len);
	if (len == sizeof(struct tmd_nd_msg))
		return advertise(skb, cfg, 0, kind == 2);
	struct tmd_nd_lladdr *option = (void *)(nd + 1);
	if (len == sizeof(struct tmd_nd_msg) + sizeof(struct tmd_nd_lladdr) &&
	    (void *)(option + 1) <= data_end && option->type == TMD_ND_OPT_SOURCE_LLADDR &&
	    option->len == 1)
		return advertise(skb, cfg, 1, kind == 2);
	return TC_ACT_OK; /* options we do not parse: no answer rather than a wrong one */
}

/* Translate the guest's IPv6 request into IPv4 from its shadow address to
 * 169.254.169.254 (NAT46), so the responder, its socket and its identity code are the
 * IPv4 ones; md_ingress translates the replies back. */
static __always_inline int translate_request(struct __sk_buff *skb, struct tmd_config *cfg,
					     __be32 shadow)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return tmd_drop(TMD_DROP_REWRITE_FAILED);

	struct iphdr ip4 = {};
	ip4.version = 4;
	ip4.ihl = 5;
	ip4.tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	ip4.tot_len = bpf_htons(bpf_ntohs(ip6->payload_len) + sizeof(struct iphdr));
	ip4.frag_off = bpf_htons(TMD_IP_DF);
	ip4.ttl = ip6->hop_limit;
	ip4.protocol = IPPROTO_TCP;
	ip4.saddr = shadow;
	ip4.daddr = TMD_METADATA_IP;
	ip4.check = tmd_csum_fold(bpf_csum_diff(0, 0, (__be32 *)&ip4, sizeof(ip4), 0));

	/* The TCP pseudo-header sums length and protocol alike in both families: only the
	 * addresses change. */
	__be32 old_addrs[8];
	__builtin_memcpy(old_addrs, ip6->saddr.in6_u.u6_addr32, 16);
	__builtin_memcpy(&old_addrs[4], ip6->daddr.in6_u.u6_addr32, 16);
	__be32 new_addrs[2] = {shadow, TMD_METADATA_IP};
	tmd_mac_copy(eth->h_dest, cfg->md_mac);

	__s64 diff = bpf_csum_diff(old_addrs, sizeof(old_addrs), new_addrs, sizeof(new_addrs), 0);
	if (bpf_l4_csum_replace(skb, TMD_IP6_TCP_CSUM_OFF, 0, diff, BPF_F_PSEUDO_HDR))
		return tmd_drop(TMD_DROP_REWRITE_FAILED);
	if (bpf_skb_change_proto(skb, bpf_htons(ETH_P_IP), 0))
		return tmd_drop(TMD_DROP_REWRITE_FAILED);
	__be16 proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, TMD_ETH_PROTO_OFF, &proto, sizeof(proto), 0) ||
	    bpf_skb_store_bytes(skb, TMD_IP_OFF, &ip4, sizeof(ip4), 0))
		return tmd_drop(TMD_DROP_REWRITE_FAILED);
	tmd_event(TMD_EVENT_REQUEST_REDIRECTED);
	return bpf_redirect(cfg->md_ifindex, 0);
}

static __always_inline int intercept_ipv6(struct __sk_buff *skb, struct tmd_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);

	if ((void *)(ip6 + 1) > data_end)
		return TC_ACT_OK;
	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		int verdict = judge_nd(skb, cfg);
		if (verdict != TC_ACT_OK)
			return verdict;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		eth = data;
		ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_OK;
	}
	int md_addr = tmd_md6_kind(ip6->daddr.in6_u.u6_addr32);
	if (!md_addr)
		return TC_ACT_OK;

	/* Addressed to us: plain TCP to port 80 (no extension header, so no fragment) is
	 * served, anything else dropped. */
	if (ip6->version != 6 || ip6->nexthdr != IPPROTO_TCP)
		return tmd_drop(TMD_DROP_UNSERVED);
	struct tcphdr *tcp = (void *)(ip6 + 1);
	if ((void *)(tcp + 1) > data_end || tcp->dest != TMD_METADATA_PORT)
		return tmd_drop(TMD_DROP_UNSERVED);
	if (!tmd_unicast_source6(ip6->saddr.in6_u.u6_addr32))
		return tmd_drop(TMD_DROP_BAD_SOURCE);
	int opens = tcp->syn && !tcp->ack && !tcp->rst && !tcp->fin;

	struct tmd_guest_key key = {};
	key.ifindex = skb->ifindex;
	key.md_addr = md_addr;
	__builtin_memcpy(key.ip6, ip6->saddr.in6_u.u6_addr32, sizeof(key.ip6));
	tmd_mac_copy(key.mac, eth->h_source);
	__u8 gw_mac[ETH_ALEN];
	tmd_mac_copy(gw_mac, eth->h_dest);
	int reason = 0;
	__u32 slot = guest_slot(cfg, &key, gw_mac, opens, &reason);
	if (!slot)
		return tmd_drop(reason);
	return translate_request(skb, cfg, cfg->shadow_net | bpf_htonl(slot));
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
	if (f->proto == bpf_htons(ETH_P_IPV6)) {
		struct {
			struct ipv6hdr ip6;
			struct tmd_nd_msg nd;
		} head;
		if (bpf_skb_load_bytes(skb, f->l3_off, &head.ip6, sizeof(head.ip6)))
			return TC_ACT_OK;
		if (tmd_md6_kind(head.ip6.daddr.in6_u.u6_addr32))
			return tmd_drop(TMD_DROP_TAGGED_METADATA);
		if (head.ip6.nexthdr != IPPROTO_ICMPV6 ||
		    bpf_skb_load_bytes(skb, f->l3_off, &head, sizeof(head)))
			return TC_ACT_OK;
		if (head.nd.type != TMD_ND_SOLICIT && head.nd.type != TMD_ND_ADVERT)
			return TC_ACT_OK;
		if (ours6(skb->ifindex, head.ip6.saddr.in6_u.u6_addr32))
			return tmd_drop(TMD_DROP_TAGGED_ND_CLAIM);
		if (ours6(skb->ifindex, head.nd.target))
			return tmd_drop(head.nd.type == TMD_ND_ADVERT ? TMD_DROP_TAGGED_ND_CLAIM
								      : TMD_DROP_TAGGED_METADATA);
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
	else if (frame.proto == bpf_htons(ETH_P_IPV6))
		verdict = intercept_ipv6(skb, cfg);
	if (verdict != TC_ACT_OK)
		return verdict;
	return drop_if_sent_to_us(skb, cfg);
}
