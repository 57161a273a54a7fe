"""Build the UPDATEs that announce or withdraw a set of prefixes, each within 4096 octets (RFC 4271 4.3).

IPv4 unicast uses the classic NLRI / Withdrawn Routes fields with NEXT_HOP; IPv6 unicast goes in MP_REACH_NLRI /
MP_UNREACH_NLRI (RFC 4760) with a global and optionally a link-local next hop (RFC 2545 section 3), and its
UPDATEs carry no NEXT_HOP (RFC 4760 section 3). Prefixes are packed greedily in the order given: every message
carries the same attributes, so the split only decides where one message ends. Withdrawals come first.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Sequence

from metalhorn.common import errors as mh_errors
from metalhorn.lb.bgp.messages import attributes, header, nlri, update

_UPDATE_FIXED = header.HEADER_SIZE + 4  # header + the two 2-octet length fields
_MP_ATTR_HEADER = 4  # flags, type, 2-octet (extended) length: the worst case
_MP_UNREACH_FIXED = 3  # AFI, SAFI
_MP_REACH_FIXED = 5  # AFI, SAFI, next hop length, reserved


def _chunks(prefixes: Sequence[nlri.Prefix], budget: int) -> list[list[nlri.Prefix]]:
    if budget < 17:  # one /128 takes 17 octets
        raise mh_errors.InvalidArgument(f"path attributes leave {budget} octets for prefixes; shorten them")
    out: list[list[nlri.Prefix]] = []
    current: list[nlri.Prefix] = []
    used = 0
    for prefix in prefixes:
        size = nlri.encoded_size(prefix)
        if used + size > budget:
            out.append(current)
            current, used = [], 0
        current.append(prefix)
        used += size
    if current:
        out.append(current)
    return out


def _v4(prefixes: Sequence[nlri.Prefix]) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(p for p in prefixes if isinstance(p, ipaddress.IPv4Network))


def build_updates(
    *,
    attributes_: attributes.PathAttributes,
    announce: Iterable[nlri.Prefix] = (),
    withdraw: Iterable[nlri.Prefix] = (),
    ipv6_next_hops: tuple[ipaddress.IPv6Address, ...] = (),
    four_octet_as: bool,
) -> list[update.Update]:
    """UPDATEs that withdraw ``withdraw`` and announce ``announce`` with ``attributes_``.

    ``attributes_`` holds everything but the MP attributes (built here); its ``next_hop`` serves IPv4 prefixes,
    ``ipv6_next_hops`` (global, then optional link-local) serve IPv6 prefixes.
    """
    if attributes_.mp_reach is not None or attributes_.mp_unreach is not None:
        raise mh_errors.InvalidArgument("build_updates makes MP_REACH/MP_UNREACH itself; pass attributes without")
    announced: list[nlri.Prefix] = list(announce)
    withdrawn: list[nlri.Prefix] = list(withdraw)
    announce_v4 = [p for p in announced if p.version == 4]
    announce_v6 = [p for p in announced if p.version == 6]
    withdraw_v4 = [p for p in withdrawn if p.version == 4]
    withdraw_v6 = [p for p in withdrawn if p.version == 6]
    out: list[update.Update] = []

    for chunk in _chunks(withdraw_v4, header.MAX_MESSAGE_SIZE - _UPDATE_FIXED) if withdraw_v4 else []:
        out.append(update.Update(withdrawn=_v4(chunk)))
    budget = header.MAX_MESSAGE_SIZE - _UPDATE_FIXED - _MP_ATTR_HEADER - _MP_UNREACH_FIXED
    for chunk in _chunks(withdraw_v6, budget) if withdraw_v6 else []:
        unreach = attributes.MpUnreach(nlri.Afi.IPV6, nlri.Safi.UNICAST, tuple(chunk))
        out.append(update.Update(attributes=attributes.PathAttributes(mp_unreach=unreach)))

    if announce_v4:
        if attributes_.next_hop is None:
            raise mh_errors.InvalidArgument("IPv4 announcements need attributes with a NEXT_HOP")
        size = len(attributes.encode(attributes_, four_octet_as=four_octet_as))
        for chunk in _chunks(announce_v4, header.MAX_MESSAGE_SIZE - _UPDATE_FIXED - size):
            out.append(update.Update(attributes=attributes_, nlri=_v4(chunk)))
    if announce_v6:
        if not 1 <= len(ipv6_next_hops) <= 2:
            raise mh_errors.InvalidArgument("IPv6 announcements need a global (and optional link-local) next hop")
        base = dataclasses.replace(attributes_, next_hop=None)
        size = len(attributes.encode(base, four_octet_as=four_octet_as))
        fixed = _MP_ATTR_HEADER + _MP_REACH_FIXED + 16 * len(ipv6_next_hops)
        for chunk in _chunks(announce_v6, header.MAX_MESSAGE_SIZE - _UPDATE_FIXED - size - fixed):
            reach = attributes.MpReach(nlri.Afi.IPV6, nlri.Safi.UNICAST, ipv6_next_hops, tuple(chunk))
            out.append(update.Update(attributes=dataclasses.replace(base, mp_reach=reach)))
    return out
