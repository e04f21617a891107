/* Packet parsing and rewriting helpers shared by the tc programs. */
#ifndef TMD_PACKET_H
#define TMD_PACKET_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/icmpv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

/* 169.254.169.254 in network order, as the link-local metadata address. */
#define TMD_METADATA_IP bpf_htonl(0xA9FEA9FE)
#define TMD_METADATA_PORT bpf_htons(80)

/* fd00:ec2::254 (EC2's IPv6 metadata address) and fe80::a9fe:a9fe (OpenStack's, on
 * the guest's link), as their first and last 32-bit words; the middle two are zero. */
#define TMD_MD6_EC2_HIGH bpf_htonl(0xFD000EC2)
#define TMD_MD6_EC2_LOW bpf_htonl(0x00000254)
#define TMD_MD6_LL_HIGH bpf_htonl(0xFE800000)
#define TMD_MD6_LL_LOW bpf_htonl(0xA9FEA9FE)

#define TMD_IP_DF 0x4000
#define TMD_IP_MF 0x2000
#define TMD_IP_OFFSET 0x1FFF

/* Offsets of the fields we rewrite, for frames with a plain 20-byte IPv4 header. */
#define TMD_IP_OFF ETH_HLEN
#define TMD_IP_CSUM_OFF (TMD_IP_OFF + offsetof(struct iphdr, check))
#define TMD_IP_SRC_OFF (TMD_IP_OFF + offsetof(struct iphdr, saddr))
#define TMD_IP_DST_OFF (TMD_IP_OFF + offsetof(struct iphdr, daddr))
#define TMD_TCP_OFF (TMD_IP_OFF + sizeof(struct iphdr))
#define TMD_TCP_CSUM_OFF (TMD_TCP_OFF + offsetof(struct tcphdr, check))

/* Offsets for frames with a plain 40-byte IPv6 header and TCP right behind it. */
#define TMD_IP6_TCP_CSUM_OFF (ETH_HLEN + sizeof(struct ipv6hdr) + offsetof(struct tcphdr, check))
#define TMD_ETH_PROTO_OFF offsetof(struct ethhdr, h_proto)

#define TMD_ND_SOLICIT 135
#define TMD_ND_ADVERT 136
#define TMD_ND_OPT_SOURCE_LLADDR 1
#define TMD_ND_OPT_TARGET_LLADDR 2
#define TMD_ND_HOP_LIMIT 255
/* Neighbour Advertisement flags, first byte of the word after the checksum. */
#define TMD_NA_ROUTER 0x80
#define TMD_NA_SOLICITED 0x40
#define TMD_NA_OVERRIDE 0x20

/* A Neighbour Solicitation or Advertisement without options. */
struct tmd_nd_msg {
	__u8 type;
	__u8 code;
	__sum16 check;
	__u8 flags;     /* NA: TMD_NA_*; NS: reserved */
	__u8 reserved[3];
	__be32 target[4];
};

/* A source or target link-layer address option for Ethernet (length 1: 8 bytes). */
struct tmd_nd_lladdr {
	__u8 type;
	__u8 len;
	__u8 mac[ETH_ALEN];
};

/* What the ICMPv6 checksum covers before the message: RFC 8200 section 8.1. */
struct tmd_ip6_pseudo {
	__be32 saddr[4];
	__be32 daddr[4];
	__be32 len;
	__be32 nexthdr;
};

/* Which metadata address `a` is (TMD_MD_ADDR_EC2_IPV6, TMD_MD_ADDR_LINK_LOCAL), or 0. */
static __always_inline int tmd_md6_kind(const __be32 *a)
{
	if (a[1] || a[2])
		return 0;
	if (a[0] == TMD_MD6_EC2_HIGH && a[3] == TMD_MD6_EC2_LOW)
		return TMD_MD_ADDR_EC2_IPV6;
	if (a[0] == TMD_MD6_LL_HIGH && a[3] == TMD_MD6_LL_LOW)
		return TMD_MD_ADDR_LINK_LOCAL;
	return 0;
}

static __always_inline void tmd_md6_addr(int kind, __be32 *out)
{
	out[1] = 0;
	out[2] = 0;
	out[0] = kind == TMD_MD_ADDR_LINK_LOCAL ? TMD_MD6_LL_HIGH : TMD_MD6_EC2_HIGH;
	out[3] = kind == TMD_MD_ADDR_LINK_LOCAL ? TMD_MD6_LL_LOW : TMD_MD6_EC2_LOW;
}

/* A unicast IPv6 source a guest can legitimately use: not ::, ::1, multicast, or an
 * IPv4-mapped address (which would read as an IPv4 guest's). */
static __always_inline int tmd_unicast_source6(const __be32 *a)
{
	if ((bpf_ntohl(a[0]) >> 24) == 0xFF)
		return 0;
	if (a[0] || a[1])
		return 1;
	if (a[2] == bpf_htonl(0x0000FFFF))
		return 0;
	return a[2] || (a[3] && a[3] != bpf_htonl(1));
}

static __always_inline int tmd_ip6_zero(const __be32 *a)
{
	return !(a[0] | a[1] | a[2] | a[3]);
}

/* Fold a 32-bit one's complement sum (as bpf_csum_diff returns it) into a checksum. */
static __always_inline __sum16 tmd_csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;
	s = (s & 0xFFFF) + (s >> 16);
	s = (s & 0xFFFF) + (s >> 16);
	return (__sum16)~s;
}

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
