/* tc clsact ingress on every guest-facing bridge port.
 *
 * - TCP to 169.254.169.254:80: give the guest identity (port, IP, MAC) a shadow slot,
 *   rewrite the source to the slot's shadow address and redirect the frame out of md0,
 *   whose peer holds 169.254.169.254 and the responder's socket.
 * - ARP who-has 169.254.169.254 (route-based mode) or a gateway address configured for
 *   this port (segments with no router): answered in place, back out of the port.
 * - Anything else addressed to 169.254.169.254 is dropped: that address is ours.
 * - Anything else sent to the MAC we answer ARP with is dropped too: a guest on a
 *   routerless segment sends all its off-link traffic there, and the bridge, which
 *   knows no such MAC, would flood it to every other guest.
 * - Everything else goes on to the bridge untouched.
 */
#include "tmd_maps.h"
#include "tmd_packet.h"

static __always_inline int answer_arp(struct __sk_buff *skb, struct tmd_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arphdr *arp = (void *)(eth + 1);
	struct tmd_arp_eth *body = (void *)(arp + 1);

	if ((void *)(body + 1) > data_end)
		return TC_ACT_OK;
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4 || arp->ar_op != bpf_htons(ARPOP_REQUEST))
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
	tmd_count(TMD_STAT_ARP_ANSWERED);
	return bpf_redirect(skb->ifindex, 0);
}

/* Find (or allocate) the shadow slot of this guest identity; 0 when none is free. */
static __always_inline __u32 shadow_slot(struct tmd_config *cfg, struct tmd_guest_key *key,
					 const __u8 *gw_mac)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 *known = tmd_by_guest.lookup(key);
	if (known) {
		__u32 slot = *known;
		struct tmd_slot *entry = tmd_slots.lookup(&slot);
		if (entry && entry->ifindex == key->ifindex && entry->ip == key->ip &&
		    tmd_mac_eq(entry->mac, key->mac)) {
			if (!tmd_mac_eq(entry->gw_mac, gw_mac))
				tmd_mac_copy(entry->gw_mac, gw_mac);
			/* Refresh at most every ~second: a write per packet costs cache lines. */
			if (now - entry->last_seen_ns > 1000000000ULL)
				entry->last_seen_ns = now;
			return slot;
		}
	}

	__u32 zero = 0;
	__u64 *next = tmd_next_slot.lookup(&zero);
	if (!next || cfg->shadow_slots == 0)
		return 0;
	/* Try a few candidates; a slot a live guest used recently is never taken over, so
	 * a reply can never reach another guest even after the counter wraps. */
	__u32 chosen = 0;
	for (int attempt = 0; attempt < 4 && !chosen; attempt++) {
		__u64 ticket = __sync_fetch_and_add(next, 1);
		__u32 slot = (__u32)(ticket % cfg->shadow_slots) + 1;
		struct tmd_slot *entry = tmd_slots.lookup(&slot);
		if (entry && !(entry->last_seen_ns && now - entry->last_seen_ns < cfg->slot_hold_ns))
			chosen = slot;
	}
	if (!chosen) {
		tmd_count(TMD_STAT_NO_SLOT);
		return 0;
	}
	/* Map updates stay outside the loop: clang would hoist the helper address into a
	 * register there and emit an indirect call the verifier rejects. */
	struct tmd_slot fresh = {};
	fresh.ifindex = key->ifindex;
	fresh.ip = key->ip;
	tmd_mac_copy(fresh.mac, key->mac);
	tmd_mac_copy(fresh.gw_mac, gw_mac);
	fresh.last_seen_ns = now;
	tmd_slots.update(&chosen, &fresh);
	tmd_by_guest.update(key, &chosen);
	return chosen;
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
	    (ip->frag_off & bpf_htons(TMD_IP_MF | TMD_IP_OFFSET)) ||
	    !tmd_unicast_source(ip->saddr))
		goto drop;
	struct tcphdr *tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end || tcp->dest != TMD_METADATA_PORT)
		goto drop;

	struct tmd_guest_key key = {};
	key.ifindex = skb->ifindex;
	key.ip = ip->saddr;
	tmd_mac_copy(key.mac, eth->h_source);
	__u8 gw_mac[ETH_ALEN];
	tmd_mac_copy(gw_mac, eth->h_dest);

	__u32 slot = shadow_slot(cfg, &key, gw_mac);
	if (!slot)
		goto drop;
	__be32 shadow = cfg->shadow_net | bpf_htonl(slot);
	__be32 guest_ip = key.ip;

	/* MACs first, with direct writes, while the packet pointers are valid. */
	tmd_mac_copy(eth->h_dest, cfg->md_mac);
	if (tmd_rewrite_addr(skb, TMD_IP_SRC_OFF, guest_ip, shadow))
		goto drop;
	tmd_count(TMD_STAT_REQUEST_REDIRECTED);
	return bpf_redirect(cfg->md_ifindex, 0);

drop:
	tmd_count(TMD_STAT_METADATA_DROPPED);
	return TC_ACT_SHOT;
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
	tmd_count(TMD_STAT_STRAY_DROPPED);
	return TC_ACT_SHOT;
}

int port_ingress(struct __sk_buff *skb)
{
	struct tmd_config *cfg = tmd_cfg();
	if (!cfg || cfg->md_ifindex == 0)
		return TC_ACT_OK;
	/* Tagged frames belong to the bridge's VLAN handling; we do not serve VLANs yet. */
	if (skb->vlan_present)
		return TC_ACT_OK;
	int verdict = TC_ACT_OK;
	if (skb->protocol == bpf_htons(ETH_P_IP))
		verdict = intercept_ipv4(skb, cfg);
	else if (skb->protocol == bpf_htons(ETH_P_ARP))
		verdict = answer_arp(skb, cfg);
	if (verdict != TC_ACT_OK)
		return verdict;
	return drop_if_sent_to_us(skb, cfg);
}
