"""The node agent (`metalhorn agent`): syncs with the manager and runs this node's replica and engine processes.

agent.py          the sync loop: report -> manager -> desired records -> instance wish; engine replica sets
instances.py      the instance manager: converge processes to a wish, restart policy with backoff
specs.py          pure: records -> process specs; engine replica set -> add/rm operations
processes.py      launching, ports, <data-path>/run/instances.json, orphan clean-up
disks.py          capacity/available per disk (statvfs)
attach.py         /dev/metalhorn/<volume> via nbdfuse + losetup (root only)
status_server.py  GET /healthz and /metrics
"""
