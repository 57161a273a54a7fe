"""The replica protocol: a sans-IO frame codec (codec.py) and its asyncio client and server."""
