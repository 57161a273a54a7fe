"""metalhorn's public test kit: fakes and conformance checks, imported only by tests.

- blockdevs.py: MemoryBlockDevice, FaultyBlockDevice, check_block_device(factory) -- run the check against
  every BlockDevice implementation (memory, replica-backed engine, ...).
"""
