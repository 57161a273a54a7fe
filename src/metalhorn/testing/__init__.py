"""metalhorn's public test kit: fakes and conformance checks, imported only by tests.

- blockdevs.py: MemoryBlockDevice, FaultyBlockDevice, check_block_device(factory) -- run the check against
  every BlockDevice implementation (memory, replica-backed engine, ...).
- clock.py: FakeClock -- time that moves only on advance(seconds).
- store.py: MemoryStore, check_store(factory) -- the conformance check every control-plane Store passes.
"""
