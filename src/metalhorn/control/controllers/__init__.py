"""Controllers: reconcile functions run by control.reconcile.Runner inside the manager process.

- settings.py:   the cluster settings (record setting/global) with their defaults.
- placement.py:  store records -> the pure scheduler's inputs (storage/scheduler.py), and back.
- nodes.py:      node ready/down from the agents' sync timestamps; disk usage (scheduled bytes).
- volumes.py:    volume -> replica and engine records: scheduling, attach/detach, status with reasons,
                 replenishment of failed replicas, deletion.
- agentsync.py:  one agent's report into the store, and the answer: the records desired on that node.

Controllers only read and write the store; agents pull their wish and push their status, so nothing here talks
to a node and a manager restart never touches I/O.
"""
