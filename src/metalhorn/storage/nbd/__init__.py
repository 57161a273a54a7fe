"""nbd package."""
