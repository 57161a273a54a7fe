"""BGP-4 message codecs, one module per job; each cites the RFC section it implements.

errors.py        NOTIFICATION error codes/subcodes (RFC 4271 section 4.5/6, RFC 4486, 6608, 7313) and BgpError
header.py        the 19-octet header and the sans-IO Framer that cuts a TCP stream into messages (4.1, 6.1)
capabilities.py  capabilities advertisement (RFC 5492): multiprotocol, route refresh, 4-octet AS, unknown
open.py          OPEN (4.2, 6.2)
nlri.py          address families and the prefix encoding shared by NLRI, withdrawn routes and MP attributes
attributes.py    path attributes (4.3, 5, 6.3; RFC 4760, 6793, 1997, 8092)
update.py        UPDATE (4.3, 6.3)
simple.py        KEEPALIVE (4.4), NOTIFICATION (4.5), ROUTE-REFRESH (RFC 2918)
codec.py         encode/decode any message (dispatch on the header type)
packing.py       build UPDATEs for a set of prefixes, split so each fits in 4096 octets
"""
