/* Packet parsing and rewriting helpers shared by the tc programs. */
#ifndef TMD_PACKET_H
#define TMD_PACKET_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

/* 169.254.169.254 in network order, as the link-local metadata address. */
#define TMD_METADATA_IP bpf_htonl(0xA9FEA9FE)
#define TMD_METADATA_PORT bpf_htons(80)

#define TMD_IP_MF 0x2000
#define TMD_IP_OFFSET 0x1FFF

/* Offsets of the fields we rewrite, for frames with a plain 20-byte IPv4 header. */
#define TMD_IP_OFF ETH_HLEN
#define TMD_IP_CSUM_OFF (TMD_IP_OFF + offsetof(struct iphdr, check))
#define TMD_IP_SRC_OFF (TMD_IP_OFF + offsetof(struct iphdr, saddr))
#define TMD_IP_DST_OFF (TMD_IP_OFF + offsetof(struct iphdr, daddr))
#define TMD_TCP_OFF (TMD_IP_OFF + sizeof(struct iphdr))
#define TMD_TCP_CSUM_OFF (TMD_TCP_OFF + offsetof(struct tcphdr, check))

/* ARP for IPv4 over Ethernet: the fixed header is followed by these addresses. */
struct tmd_arp_eth {
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

/* The whole ARP packet for IPv4 with 6-byte hardware addresses, read in one copy. */
struct tmd_arp_ipv4 {
	struct arphdr hdr;
	struct tmd_arp_eth body;
} __attribute__((packed));

/* ARP carrying IPv4 addresses behind 6-byte hardware addresses, whatever ar_hrd says:
 * Linux on Ethernet takes ar_hrd 1 (Ethernet) and 6 (IEEE 802) alike, and another
 * stack may take more, so the hardware type proves nothing either way. */
static __always_inline int tmd_arp_is_ipv4(const struct arphdr *arp)
{
	return arp->ar_pro == bpf_htons(ETH_P_IP) && arp->ar_hln == ETH_ALEN &&
	       arp->ar_pln == 4;
}

/* Tags a frame may carry and still be judged: one or two, 802.1Q or 802.1ad, VID 0
 * (a priority tag, which Linux takes as untagged) or not. */
#define TMD_MAX_VLAN_TAGS 2

struct tmd_vlan_tag {
	__be16 tci;
	__be16 encapsulated_proto;
};

static __always_inline int tmd_vlan_proto(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/* What a frame carries once its VLAN tags are walked. On tc ingress the kernel has
 * usually moved the outer tag out of the packet already (skb->vlan_present, VID in
 * skb->vlan_tci), leaving an inner tag, if any, in the packet: both count. */
struct tmd_frame {
	__be16 proto;   /* ethertype of the payload; 0 when a tag is cut short */
	__u16 l3_off;   /* where the payload starts in the packet */
	__u8 tagged;    /* carried a tag, in skb->vlan_tci or in the packet */
	__u8 too_deep;  /* more than TMD_MAX_VLAN_TAGS tags: the payload is not looked at */
};

/* Fills *f; -1 for a frame shorter than an Ethernet header. Untagged frames cost one
 * comparison: tags are read with bpf_skb_load_bytes only when there are some. */
static __always_inline int tmd_parse_frame(struct __sk_buff *skb, struct tmd_frame *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__u32 tags = skb->vlan_present ? 1 : 0;
	__be16 proto = eth->h_proto;
	__u32 off = ETH_HLEN;
#pragma unroll
	for (int i = 0; i < TMD_MAX_VLAN_TAGS; i++) {
		if (!tmd_vlan_proto(proto))
			break;
		struct tmd_vlan_tag tag;
		if (bpf_skb_load_bytes(skb, off, &tag, sizeof(tag))) {
			proto = 0;
			tags++;
			break;
		}
		proto = tag.encapsulated_proto;
		off += sizeof(tag);
		tags++;
	}
	f->proto = proto;
	f->l3_off = off;
	f->tagged = tags != 0;
	f->too_deep = tags > TMD_MAX_VLAN_TAGS || tmd_vlan_proto(proto);
	return 0;
}

static __always_inline int tmd_mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline void tmd_mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ETH_ALEN);
}

/* A unicast IPv4 source a guest can legitimately use (not 0/8, loopback, multicast,
 * or broadcast): anything else can never be answered. */
static __always_inline int tmd_unicast_source(__be32 addr)
{
	__u32 a = bpf_ntohl(addr);
	__u8 first = a >> 24;
	return first != 0 && first != 127 && first < 224;
}

/* Rewrite one IPv4 address (src or dst) and fix the IP and TCP checksums. Direct
 * packet writes must be done before calling: the helpers invalidate packet pointers. */
static __always_inline int tmd_rewrite_addr(struct __sk_buff *skb, int addr_off,
					    __be32 old_addr, __be32 new_addr)
{
	if (bpf_l4_csum_replace(skb, TMD_TCP_CSUM_OFF, old_addr, new_addr,
				BPF_F_PSEUDO_HDR | sizeof(new_addr)))
		return -1;
	if (bpf_l3_csum_replace(skb, TMD_IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0))
		return -1;
	return 0;
}

#endif
