"""ScriptedBgpPeer: an in-process BGP peer on loopback, built on the codecs, for session tests.

A test scripts what the peer sends (``send`` of message values or raw bytes) and reads what it received
(``receive`` decodes one message at a time). It listens on 127.0.0.1 with a port the OS chose (the session
connects to it), or connects to a session's listener (``connect``) to test the passive side.
"""

from __future__ import annotations

import asyncio
import ipaddress

from metalhorn.lb.bgp.messages import capabilities, codec, header, nlri, simple
from metalhorn.lb.bgp.messages import open_message as om


class ScriptedBgpPeer:
    def __init__(self, *, asn: int = 64512, bgp_id: str = "198.18.255.1", hold_time: int = 90) -> None:
        self.asn = asn
        self.bgp_id = ipaddress.IPv4Address(bgp_id)
        self.hold_time = hold_time
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = header.Framer()
        self._pending: list[header.RawMessage] = []
        self.four_octet_as = True
        self._all: list[asyncio.StreamWriter] = []

    async def listen(self) -> int:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._all.append(writer)
            await self._accepted.put((reader, writer))

        self._server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def accept(self, *, wait: float = 2.0) -> None:
        """Take the next connection the session made to us."""
        self._reader, self._writer = await asyncio.wait_for(self._accepted.get(), wait)
        self._framer = header.Framer()
        self._pending = []

    async def connect(self, host: str, port: int) -> None:
        self._reader, self._writer = await asyncio.open_connection(host, port)
        self._framer = header.Framer()
        self._pending = []

    def open_message(self, *, capabilities_: tuple[capabilities.Capability, ...] | None = None) -> om.Open:
        caps = capabilities_
        if caps is None:
            caps = (
                capabilities.Multiprotocol(nlri.Afi.IPV4, nlri.Safi.UNICAST),
                capabilities.Multiprotocol(nlri.Afi.IPV6, nlri.Safi.UNICAST),
                capabilities.RouteRefresh(),
            )
        return om.Open.build(asn=self.asn, hold_time=self.hold_time, bgp_id=self.bgp_id, capabilities=caps)

    def send(self, message: codec.Message | bytes) -> None:
        assert self._writer is not None, "no connection"
        data = message if isinstance(message, bytes) else codec.encode(message, four_octet_as=self.four_octet_as)
        self._writer.write(data)

    async def receive_raw(self, *, wait: float = 2.0) -> header.RawMessage:
        assert self._reader is not None, "no connection"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not self._pending:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("no BGP message from the session")
            data = await asyncio.wait_for(self._reader.read(65536), left)
            if not data:
                raise ConnectionError("the session closed the connection")
            self._pending += self._framer.feed(data)
        return self._pending.pop(0)

    async def receive(self, *, wait: float = 2.0) -> codec.Message:
        return codec.decode(await self.receive_raw(wait=wait), four_octet_as=self.four_octet_as)

    async def receive_until(self, kind: type, *, wait: float = 2.0, limit: int = 100) -> codec.Message:
        """The next message of ``kind``, skipping others (KEEPALIVEs, usually)."""
        for _ in range(limit):
            message = await self.receive(wait=wait)
            if isinstance(message, kind):
                return message
        raise AssertionError(f"no {kind.__name__} in {limit} messages")

    async def establish(self, *, open_: om.Open | None = None) -> om.Open:
        """Accept (if listening), exchange OPENs and KEEPALIVEs; returns the session's OPEN."""
        if self._reader is None:
            await self.accept()
        theirs = await self.receive()
        assert isinstance(theirs, om.Open), theirs
        self.send(open_ or self.open_message())
        self.send(simple.Keepalive())
        keepalive = await self.receive()
        assert isinstance(keepalive, simple.Keepalive), keepalive
        return theirs

    async def closed(self, *, wait: float = 2.0) -> bool:
        """True once the session closed the connection (messages still in flight are read and dropped)."""
        assert self._reader is not None
        try:
            async with asyncio.timeout(wait):
                while await self._reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def close(self) -> None:
        self.drop()
        for writer in self._all:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
