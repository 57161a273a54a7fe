"""Layer-2 announcements: one healthy node answers ARP/NDP for each service IP and delivers its traffic.

    frames.py      PURE: Ethernet, ARP and IPv6 neighbour discovery codec; what to answer, what to announce
    responder.py   AF_PACKET socket per interface: answers for owned IPs, gratuitous ARP / unsolicited NA
    membership.py  UDP probes between agents: who is healthy (sans-IO core + asyncio shell)
    delivery.py    VIP:port -> healthy endpoints: nftables DNAT (table inet metalhorn) or a userspace proxy
    announcer.py   desired state in (set_balancer, set_nodes, on_membership); election decides, responders act
The owner of each IP is chosen by the pure metalhorn.lb.election.
"""
