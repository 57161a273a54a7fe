"""metalhorn: replicated block volumes and LoadBalancer IPs for clusters without a cloud.

What lives where:
  common/    layer 0, no I/O: the error tree with stable codes, size units, the clock, logging helpers.
  storage/   data plane 1 (never imports lb/ or control/).
             chain/ wire/ nbd/ are pure: extent map + replica metadata, the replica frame codec, the NBD
             protocol. replica/ engine/ frontend/ are the I/O shell: files, sockets, processes.
  lb/        data plane 2 (never imports storage/ or control/): MetalLB-compatible config, allocator,
             layer-2 and BGP announcements.
  control/   manager, store, controllers, REST API and CLI client (grows with the control-plane issue).
  daemons/   entry points only: parse arguments, build objects, run them. `metalhorn` starts here.
  testing/   the public test kit (fakes and conformance checks), imported only by tests.
"""

__version__ = "0.1.0"
