"""metalhorn's own BGP-4 speaker, split so the hard parts stay pure.

  messages/   sans-IO wire codecs (RFC 4271 section 4, RFC 4760, 6793, 1997, 8092, 2918, 5492): bytes in,
              frozen values out, and decoding faults raised as ``BgpError(code, subcode, data)`` exactly as
              RFC 4271 section 6 wants them, so a session answers with the right NOTIFICATION.
  fsm.py      the RFC 4271 section 8 state machine as an enforced transition table; actions are values and
              timers are deadlines polled with an injected ``now``.
  session.py  (later) the thin asyncio shell that moves bytes and runs the actions.

Nothing here imports asyncio, sockets or the OS: every rule of the protocol is tested in microseconds.
"""
