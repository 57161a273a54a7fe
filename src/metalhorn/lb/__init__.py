"""Load balancing: MetalLB-compatible LoadBalancer IPs for bare metal (data plane 2; never imports storage/).

Pure cores, tested without root or sockets:
    fields.py     reading Kubernetes-shaped documents; every problem named by object and field; label selectors
    config.py     MetalLB's kinds (IPAddressPool, L2/BGPAdvertisement, Community, BGPPeer, BFDProfile) -> LbConfig
    model.py      a LoadBalancer Service (ports, requested IPs, pool, sharing key, families, endpoints)
    allocator.py  which IPs each Service gets (pools, priorities, sharing, dual stack, avoidBuggyIPs)
Shells (asyncio, sockets, netlink) announce the IPs: layer2/ (ARP/NDP) and bgp/ (our own BGP-4 speaker).
"""
