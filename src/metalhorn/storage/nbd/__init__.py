"""The NBD protocol, server side, without I/O (sans-IO in the style of h11).

- constants.py   magics, option/reply/info/command/flag/error numbers of doc/proto.md
- messages.py    byte layouts and the pure builders of greeting, option replies and simple replies
- events.py      what a connection reports: OptionRequest, Negotiated, Command, Answered, Disconnect
- connection.py  ServerConnection: the enforced handshake/transmission state machine and request parser

The asyncio server that moves the bytes lives in metalhorn.storage.frontend.nbd.
"""
