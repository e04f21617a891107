/* tc clsact ingress on md0, the host end of the responder's veth pair.
 *
 * Every frame arriving here is a reply from the responder to a shadow address. The
 * slot behind that address says which guest asked: restore its IP as destination, its
 * MAC, and the gateway MAC it used as source, then send the frame straight out of its
 * port (the bridge is skipped). Nothing else ever leaves the responder's side; a slot
 * that has been freed (ifindex 0) sends nothing anywhere.
 */
#include "tmd_maps.h"
#include "tmd_packet.h"

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
