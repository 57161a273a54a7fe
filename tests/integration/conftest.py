"""Fixtures for the integration tier: third-party tools must be present (scripts/test installs them)."""

from __future__ import annotations

import shutil

import pytest

TOOLS = ("nbdinfo", "nbdcopy", "qemu-io", "fio", "nbdsh")


@pytest.fixture(autouse=True)
def _tools_present() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run ./scripts/test as root so it can apt-get them")
