"""The raw-socket datapath: the tc datapath's service with no eBPF program loaded.

One AF_PACKET socket per guest port sees requests to 169.254.169.254:80 and ARP for our
addresses before the bridge does; a bridge-family nftables table keeps the bridge from
also forwarding them; the request, given its shadow source, is injected into the
responder's veth, whose kernel TCP serves it; replies captured there go back out of the
guest's own port. Each module has one job:

    socket_filter   the classic BPF programs that keep everything else out of Python
    packet_socket   opening, binding and reading an AF_PACKET socket
    frames          parsing and rewriting frames (dpkt)
    admission       who gets a shadow slot: quotas, SYN rate, MAC locks (the port
                    program's rules, over the shared tables)
    nft_table       the daemon's nftables tables: create, take over, guard, remove
    pump            the thread that moves frames
    datapath        the whole raw datapath as one object (start, stop, stats)
"""
