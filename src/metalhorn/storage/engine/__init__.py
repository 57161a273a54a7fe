"""The replicating engine of one volume.

policy.py   PURE: replica modes RW/WO/ERR, what a fan-out's per-replica errors mean, which replicas start RW
engine.py   Engine: a BlockDevice over N replica connections (fan-out writes, round-robin reads, mode changes)
control.py  newline-delimited JSON control endpoint (`{"op": "info"}`) and its client
service.py  Engine + NBD frontend + control endpoint + keepalive, as `metalhorn engine serve` runs them
"""
