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
