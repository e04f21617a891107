#!/bin/sh
# udhcpc event script for tests: configures the one interface it is given, installs
# RFC 3442 classless routes (option 121, else 249) and never writes /etc/resolv.conf,
# which a network namespace shares with the host.
#
# Like RFC 3442 clients, it ignores option 3 (router) when classless routes arrive.
# If TMD_DHCP_STATE names a file, the lease's values are written there as KEY=VALUE.
set -e

install_routes() {
    # $1: "dst/len gw dst/len gw ..." as udhcpc prints option 121/249.
    set -- $1
    while [ "$#" -ge 2 ]; do
        if [ "$2" = "0.0.0.0" ]; then
            ip route replace "$1" dev "$interface"
        else
            ip route replace "$1" via "$2" dev "$interface"
        fi
        shift 2
    done
}

record_state() {
    [ -n "$TMD_DHCP_STATE" ] || return 0
    {
        echo "ip=$ip"
        echo "mask=$mask"
        echo "router=$router"
        echo "staticroutes=$staticroutes"
        echo "msstaticroutes=$msstaticroutes"
    } > "$TMD_DHCP_STATE"
}

case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip -4 route flush dev "$interface"
        ip addr add "$ip/${mask:-32}" dev "$interface"
        if [ -n "$staticroutes" ]; then
            install_routes "$staticroutes"
        elif [ -n "$msstaticroutes" ]; then
            install_routes "$msstaticroutes"
        elif [ -n "$router" ]; then
            set -- $router
            ip route replace default via "$1" dev "$interface"
        fi
        record_state
        ;;
esac
exit 0
