/* tc clsact ingress on md0, the host end of the responder's veth pair.
 *
 * Every frame arriving here is a reply from the responder to a shadow address. The
 * slot behind that address says which guest asked: restore its IP as destination, its
 * MAC, and the gateway MAC it used as source, then send the frame straight out of its
 * port (the bridge is skipped). A slot of an IPv6 guest gets its reply translated back
 * to IPv6 (see reply_ipv6). Nothing else ever leaves the responder's side; a slot
 * that has been freed (ifindex 0) sends nothing anywhere.
 */
#include "tmd_maps.h"
#include "tmd_packet.h"

/* The reply to an IPv6 guest: translate it back (NAT64 of what port_ingress
 * translated), from the metadata address the guest asked, to the guest's address. The
 * IP TTL becomes the hop limit, so a token reply's hop limit of 1 carries over. */
static __always_inline int reply_ipv6(struct __sk_buff *skb, struct tmd_slot *guest)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return tmd_drop(TMD_DROP_REPLY_UNSERVED);

	struct ethhdr eth = {};
	tmd_mac_copy(eth.h_dest, guest->mac);
	tmd_mac_copy(eth.h_source, guest->gw_mac);
	eth.h_proto = bpf_htons(ETH_P_IPV6);
	struct ipv6hdr ip6 = {};
	ip6.version = 6;
	ip6.priority = ip->tos >> 4;
	ip6.flow_lbl[0] = (ip->tos & 0xF) << 4;
	ip6.payload_len = bpf_htons(bpf_ntohs(ip->tot_len) - sizeof(struct iphdr));
	ip6.nexthdr = IPPROTO_TCP;
	ip6.hop_limit = ip->ttl;
	tmd_md6_addr(guest->flags & TMD_SLOT_LINK_LOCAL_MD ? TMD_MD_ADDR_LINK_LOCAL
							   : TMD_MD_ADDR_EC2_IPV6,
		     ip6.saddr.in6_u.u6_addr32);
	__builtin_memcpy(ip6.daddr.in6_u.u6_addr32, guest->ip6, sizeof(guest->ip6));
	__u32 port = guest->ifindex;

	__be32 old_addrs[2] = {ip->saddr, ip->daddr};
	__be32 new_addrs[8];
	__builtin_memcpy(new_addrs, ip6.saddr.in6_u.u6_addr32, 16);
	__builtin_memcpy(&new_addrs[4], ip6.daddr.in6_u.u6_addr32, 16);
	__s64 diff = bpf_csum_diff(old_addrs, sizeof(old_addrs), new_addrs, sizeof(new_addrs), 0);
	if (bpf_l4_csum_replace(skb, TMD_TCP_CSUM_OFF, 0, diff, BPF_F_PSEUDO_HDR))
		return tmd_drop(TMD_DROP_REWRITE_FAILED);
	if (bpf_skb_change_proto(skb, bpf_htons(ETH_P_IPV6), 0))
		return tmd_drop(TMD_DROP_REWRITE_FAILED);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6), 0))
		return tmd_drop(TMD_DROP_REWRITE_FAILED);
	tmd_event(TMD_EVENT_REPLY_REDIRECTED);
	return bpf_redirect(port, 0);
}

int md_ingress(struct __sk_buff *skb)
{
	struct tmd_config *cfg = tmd_cfg();
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if (!cfg || skb->protocol != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > data_end)
		return tmd_drop(TMD_DROP_REPLY_UNSERVED);
	if (ip->ihl != 5 || ip->protocol != IPPROTO_TCP || ip->saddr != TMD_METADATA_IP ||
	    (ip->daddr & cfg->shadow_mask) != cfg->shadow_net)
		return tmd_drop(TMD_DROP_REPLY_UNSERVED);

	__u32 slot = bpf_ntohl(ip->daddr & ~cfg->shadow_mask);
	if (slot == 0 || slot > cfg->shadow_slots)
		return tmd_drop(TMD_DROP_REPLY_NO_SLOT);
	struct tmd_slot *guest = tmd_slots.lookup(&slot);
	if (!guest || guest->ifindex == 0)
		return tmd_drop(TMD_DROP_REPLY_NO_SLOT);

	if (guest->flags & TMD_SLOT_IPV6)
		return reply_ipv6(skb, guest);

	__be32 shadow = ip->daddr;
	__u32 port = guest->ifindex;
	__be32 guest_ip = guest->ip;
	tmd_mac_copy(eth->h_dest, guest->mac);
	tmd_mac_copy(eth->h_source, guest->gw_mac);
	if (tmd_rewrite_addr(skb, TMD_IP_DST_OFF, shadow, guest_ip))
		return tmd_drop(TMD_DROP_REWRITE_FAILED);
	tmd_event(TMD_EVENT_REPLY_REDIRECTED);
	return bpf_redirect(port, 0);
}
