"""Which LoadBalancer IPs each Service gets: MetalLB's allocator semantics, pure and deterministic.

Callers hand over the whole wish (``set_pools(config)``, then ``assign(service)`` for every service) and the
allocator works out the changes.  The durable record is each service's status in the store; at start the manager
calls ``set_pools`` then ``restore(service, ips)`` for every stored status, so IPs never change on restart.

Semantics follow MetalLB's allocator and service controller:

- requested IPs (``spec.loadBalancerIP`` / ``metallb.io/loadBalancerIPs``) must lie in one pool; the pool
  annotation must then agree; otherwise ``metallb.io/address-pool`` names the pool; otherwise pools with a
  ``serviceAllocation`` that selects the service (lowest ``priority`` first, 0 = last), then every pool with
  ``autoAssign`` and no ``serviceAllocation``.  Pools of equal rank go by name (MetalLB picks at random).
- an IP is shared only between services with the same non-empty ``metallb.io/allow-shared-ip`` key whose
  (port, protocol) pairs do not collide.
- SingleStack takes the service's family; RequireDualStack needs both families from one pool; PreferDualStack
  takes both if one pool has both, else the first pool with the primary family, else the secondary.
- ``avoidBuggyIPs`` skips IPv4 addresses ending in .0 and .255 (smurf protection on cheap routers drops them).
- within a pool: ranges in the order written, lowest free (or compatibly shared) address first.

Each range keeps a high-water mark plus a heap of holes below it, so finding the lowest free address costs
O(log n) however full the pool is (MetalLB walks the pool from its first address every time).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import heapq
import ipaddress
from collections.abc import Iterable, Mapping

from metalhorn.lb import config, fields, model

IPAddress = config.IPAddress


class PendingCode(enum.Enum):
    NO_FREE_IP = "no-free-ip"
    NO_POOL = "no-pool"  # no pool serves this service at all
    UNKNOWN_POOL = "unknown-pool"
    NOT_IN_POOL = "not-in-pool"  # a requested IP lies in no (single) pool
    POOL_MISMATCH = "pool-mismatch"  # requested IPs and address-pool annotation disagree
    NOT_ALLOWED = "not-allowed"  # the pool's serviceAllocation excludes the service
    IP_TAKEN = "ip-taken"


@dataclasses.dataclass(frozen=True)
class Assignment:
    service: str
    pool: str
    ips: tuple[IPAddress, ...]


@dataclasses.dataclass(frozen=True)
class Pending:
    service: str
    code: PendingCode
    reason: str


@dataclasses.dataclass(frozen=True)
class Released:
    """Event from set_pools: the service lost its IPs and must be assigned again."""

    service: str
    pool: str
    ips: tuple[IPAddress, ...]
    reason: str


@dataclasses.dataclass(frozen=True)
class Moved:
    """Event from set_pools: the service keeps its IPs, which now belong to another pool."""

    service: str
    old_pool: str
    new_pool: str
    ips: tuple[IPAddress, ...]


@dataclasses.dataclass(frozen=True)
class PoolCounts:
    assigned_v4: int = 0
    assigned_v6: int = 0
    total_v4: int = 0
    total_v6: int = 0

    @property
    def assigned(self) -> int:
        return self.assigned_v4 + self.assigned_v6

    @property
    def total(self) -> int:
        return self.total_v4 + self.total_v6

    @property
    def available(self) -> int:
        return self.total - self.assigned


def is_buggy(ip: IPAddress) -> bool:
    """IPv4 .0 and .255: some CPE firmwares drop them as broadcast (MetalLB's avoidBuggyIPs)."""
    return ip.version == 4 and int(ip) & 0xFF in (0, 0xFF)


class _Range:
    """Free addresses of one ``spec.addresses`` entry: used set + high-water mark + heap of holes below it."""

    __slots__ = ("avoid_buggy", "first", "holes", "hwm", "last", "used", "version")

    def __init__(self, rng: config.AddressRange, *, avoid_buggy: bool) -> None:
        self.version = rng.version
        self.first, self.last = int(rng.first), int(rng.last)
        self.avoid_buggy = avoid_buggy and rng.version == 4
        self.hwm = self.first  # every address below is used or a hole in `holes`
        self.holes: list[int] = []
        self.used: set[int] = set()

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.version and self.first <= int(ip) <= self.last

    def usable(self, x: int) -> bool:
        return not (self.avoid_buggy and x & 0xFF in (0, 0xFF))

    def lowest_free(self) -> int | None:
        holes, used = self.holes, self.used
        while holes and holes[0] in used:  # taken again since it was freed (restore / requested IP)
            heapq.heappop(holes)
        while self.hwm <= self.last and (self.hwm in used or not self.usable(self.hwm)):
            self.hwm += 1
        best = self.hwm if self.hwm <= self.last else None
        if holes and (best is None or holes[0] < best):
            best = holes[0]
        return best

    def take(self, x: int) -> None:
        self.used.add(x)

    def give(self, x: int) -> None:
        self.used.discard(x)
        if x < self.hwm:
            heapq.heappush(self.holes, x)

    def total(self) -> int:
        n = self.last - self.first + 1
        if self.avoid_buggy:
            for r in (0, 0xFF):  # how many x in [first, last] have x % 256 == r
                n -= (self.last - r) // 256 - (self.first - 1 - r) // 256
        return n


class _Pool:
    def __init__(self, pool: config.IPAddressPool) -> None:
        self.spec = pool
        self.name = pool.name
        self.ranges = [_Range(r, avoid_buggy=pool.avoid_buggy_ips) for r in pool.addresses]

    def range_for(self, ip: IPAddress) -> _Range | None:
        if self.spec.avoid_buggy_ips and is_buggy(ip):
            return None
        return next((r for r in self.ranges if r.contains(ip)), None)


@dataclasses.dataclass
class _IpUse:
    pool: str
    sharing_key: str
    users: dict[str, frozenset[tuple[int, str]]]  # service key -> its (port, protocol) pairs


@dataclasses.dataclass(frozen=True)
class _Alloc:
    pool: str
    ips: tuple[IPAddress, ...]
    ports: frozenset[tuple[int, str]]
    sharing_key: str


def _ips_text(ips: Iterable[IPAddress]) -> str:
    return ", ".join(str(ip) for ip in ips)


class Allocator:
    """Mutable allocation state over an immutable LbConfig. Not thread-safe: one owner (the service controller)."""

    def __init__(self, *, namespace_labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._pools: dict[str, _Pool] = {}
        # Derived from _pools by set_pools, so a pool choice or an IP -> pool lookup does not scan every pool.
        self._auto: list[_Pool] = []  # autoAssign pools without serviceAllocation, by name
        self._allocating: list[_Pool] = []  # autoAssign pools with serviceAllocation, by (priority rank, name)
        self._starts: dict[int, list[int]] = {4: [], 6: []}  # per family: first address of every range, sorted
        self._owners: dict[int, list[tuple[int, _Pool]]] = {4: [], 6: []}  # (last address, pool), same order
        self._allocs: dict[str, _Alloc] = {}
        self._ips: dict[IPAddress, _IpUse] = {}
        self._shared: dict[tuple[str, str], set[IPAddress]] = {}  # (pool, sharing key) -> IPs holding that key
        self._namespace_labels: dict[str, dict[str, str]] = {}
        self.set_namespace_labels(namespace_labels or {})

    # -- desired state -------------------------------------------------------------------------------------

    def set_namespace_labels(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        """Namespace labels, for serviceAllocation.namespaceSelectors (Kubernetes would read Namespace objects)."""
        self._namespace_labels = {ns: dict(lbl) for ns, lbl in labels.items()}

    def set_pools(self, cfg: config.LbConfig) -> list[Released | Moved]:
        """Take a new configuration; services whose IPs left every pool are released and reported."""
        old = self._allocs
        self._pools = {p.name: _Pool(p) for p in cfg.pools}
        self._index_pools()
        self._allocs, self._ips, self._shared = {}, {}, {}
        events: list[Released | Moved] = []
        for key in sorted(old):
            alloc = old[key]
            pool = self._pool_holding(alloc.ips)
            if pool is None:
                if alloc.pool not in self._pools:
                    reason = f"pool {alloc.pool} was removed"
                else:
                    gone = [ip for ip in alloc.ips if self._pools[alloc.pool].range_for(ip) is None]
                    reason = f"{_ips_text(gone)} left pool {alloc.pool}"
                events.append(Released(key, alloc.pool, alloc.ips, reason))
                continue
            if pool.name != alloc.pool:
                events.append(Moved(key, alloc.pool, pool.name, alloc.ips))
                alloc = dataclasses.replace(alloc, pool=pool.name)
            self._register(key, alloc)
        return events

    # -- per service ----------------------------------------------------------------------------------------

    def assign(self, service: model.Service) -> Assignment | Pending:
        """Keep the service's IPs if they still fit, else find new ones; Pending says why none were found."""
        key = service.key
        alloc = self._allocs.get(key)
        if alloc is not None:
            if self._still_fits(service, alloc):
                alloc = self._grow_to_dual_stack(service, alloc)
                self._unregister(key)
                self._register(
                    key, dataclasses.replace(alloc, ports=service.port_keys, sharing_key=service.sharing_key)
                )
                return Assignment(key, alloc.pool, alloc.ips)
            self._unregister(key)
        if service.requested_ips:
            return self._assign_requested(service)
        if service.address_pool:
            pool = self._pools.get(service.address_pool)
            if pool is None:
                return Pending(key, PendingCode.UNKNOWN_POOL, f"pool {service.address_pool} does not exist")
            if not self._compatible(pool, service):
                return self._not_allowed(service, pool)
            return self._allocate(service, [pool]) or self._no_free_ip(service, [pool])
        pinned = [p for p in self._allocating if self._pinned(p, service)]
        auto = self._auto
        if not pinned and not auto:
            return Pending(key, PendingCode.NO_POOL, f"no pool with autoAssign serves {key}")
        result = self._allocate(service, pinned) if pinned else None
        if result is None and auto:
            result = self._allocate(service, auto)
        return result or self._no_free_ip(service, pinned + auto)

    def restore(self, service: model.Service, ips: Iterable[IPAddress]) -> Assignment | Pending:
        """Re-take IPs recorded in a stored status (at start); the next assign() re-checks everything else."""
        key = service.key
        self.release(key)
        wanted = tuple(ips)
        if not wanted:
            return Pending(key, PendingCode.NOT_IN_POOL, "no IPs to restore")
        return self._take(service, wanted, what="stored IP")

    def release(self, service: model.Service | str) -> bool:
        key = service if isinstance(service, str) else service.key
        if key not in self._allocs:
            return False
        self._unregister(key)
        return True

    # -- queries --------------------------------------------------------------------------------------------

    def assignment(self, service: model.Service | str) -> Assignment | None:
        key = service if isinstance(service, str) else service.key
        alloc = self._allocs.get(key)
        return Assignment(key, alloc.pool, alloc.ips) if alloc else None

    def assignments(self) -> list[Assignment]:
        return [Assignment(k, a.pool, a.ips) for k, a in sorted(self._allocs.items())]

    def users(self, ip: IPAddress) -> tuple[str, ...]:
        use = self._ips.get(ip)
        return tuple(sorted(use.users)) if use else ()

    def counts(self) -> dict[str, PoolCounts]:
        """Per pool: distinct assigned IPs and usable addresses, by family (for `metalhorn lb pools`)."""
        out: dict[str, PoolCounts] = {}
        for name, pool in sorted(self._pools.items()):
            c = {4: [0, 0], 6: [0, 0]}
            for r in pool.ranges:
                c[r.version][0] += len(r.used)
                c[r.version][1] += r.total()
            out[name] = PoolCounts(c[4][0], c[6][0], c[4][1], c[6][1])
        return out

    # -- internals ------------------------------------------------------------------------------------------

    def _index_pools(self) -> None:
        pools = sorted(self._pools.values(), key=lambda p: p.name)
        self._auto = [p for p in pools if p.spec.auto_assign and p.spec.service_allocation is None]
        self._allocating = sorted(
            (p for p in pools if p.spec.auto_assign and p.spec.service_allocation is not None),
            key=lambda p: (_priority_rank(p), p.name),
        )
        for version in (4, 6):
            ranges = sorted((r.first, r.last, p) for p in pools for r in p.ranges if r.version == version)
            self._starts[version] = [first for first, _, _ in ranges]
            self._owners[version] = [(last, p) for _, last, p in ranges]

    def _pool_of(self, ip: IPAddress) -> _Pool | None:
        """The pool whose ranges hold `ip` (pools never overlap: config.parse refuses that), by bisection."""
        x = int(ip)
        i = bisect.bisect_right(self._starts[ip.version], x) - 1
        if i < 0:
            return None
        last, pool = self._owners[ip.version][i]
        return pool if x <= last else None

    def _pool_holding(self, ips: Iterable[IPAddress]) -> _Pool | None:
        """The one pool that holds every IP (and does not avoid it as buggy), or None."""
        found: _Pool | None = None
        for ip in ips:
            pool = self._pool_of(ip)
            if pool is None or (found is not None and pool is not found) or pool.range_for(ip) is None:
                return None
            found = pool
        return found

    def _effective_namespaces(self, sa: config.ServiceAllocation) -> set[str]:
        out = set(sa.namespaces)
        if sa.namespace_selectors:
            out.update(
                ns
                for ns, labels in self._namespace_labels.items()
                if fields.any_selector_matches(sa.namespace_selectors, labels)
            )
        return out

    def _compatible(self, pool: _Pool, service: model.Service) -> bool:
        sa = pool.spec.service_allocation
        if sa is None:
            return True
        namespaces = self._effective_namespaces(sa)
        if namespaces and service.namespace not in namespaces:
            return False
        if sa.service_selectors:
            return fields.any_selector_matches(sa.service_selectors, service.label_map)
        return True

    def _pinned(self, pool: _Pool, service: model.Service) -> bool:
        """MetalLB's pinnedPoolsForService: pools whose serviceAllocation picks this service out."""
        sa = pool.spec.service_allocation
        if sa is None:
            return False
        if sa.namespaces or sa.namespace_selectors or sa.service_selectors:
            picked = service.namespace in self._effective_namespaces(sa) or bool(sa.service_selectors)
            return picked and self._compatible(pool, service)
        return True  # a serviceAllocation that names nothing matches everything

    def _conflict(self, ip: IPAddress, service: model.Service) -> str | None:
        """Why `service` may not use `ip` now, or None."""
        use = self._ips.get(ip)
        if use is None:
            return None
        others = sorted(u for u in use.users if u != service.key)
        if not others:
            return None
        if not service.sharing_key or use.sharing_key != service.sharing_key:
            return f"taken by {others[0]}"
        ports = service.port_keys
        for other in others:
            clash = sorted(ports & use.users[other])
            if clash:
                port, proto = clash[0]
                return f"taken by {other} (port {port}/{proto} is in use)"
        return None

    def _still_fits(self, service: model.Service, alloc: _Alloc) -> bool:
        pool = self._pools[alloc.pool]
        if service.requested_ips and set(service.requested_ips) != set(alloc.ips):
            return False
        if service.address_pool and service.address_pool != alloc.pool:
            return False
        if not self._compatible(pool, service):
            return False
        versions = {ip.version for ip in alloc.ips}
        policy = service.ip_family_policy
        if policy is model.IPFamilyPolicy.SINGLE_STACK and versions != {service.ip_families[0]}:
            return False
        if policy is model.IPFamilyPolicy.REQUIRE_DUAL_STACK and versions != {4, 6}:
            return False
        return all(self._conflict(ip, service) is None for ip in alloc.ips)

    def _grow_to_dual_stack(self, service: model.Service, alloc: _Alloc) -> _Alloc:
        """PreferDualStack with one IP: add the other family from the same pool when one is free."""
        if (
            service.ip_family_policy is not model.IPFamilyPolicy.PREFER_DUAL_STACK
            or len(alloc.ips) != 1
            or service.requested_ips
        ):
            return alloc
        other = 10 - alloc.ips[0].version  # 4 <-> 6
        ip = self._find(self._pools[alloc.pool], other, service)
        if ip is None:
            return alloc
        ips = tuple(sorted((alloc.ips[0], ip), key=lambda a: service.ip_families.index(a.version)))
        return dataclasses.replace(alloc, ips=ips)

    def _find(self, pool: _Pool, version: int, service: model.Service) -> IPAddress | None:
        shared = self._shared.get((pool.name, service.sharing_key), ()) if service.sharing_key else ()
        for rng in pool.ranges:
            if rng.version != version:
                continue
            best = rng.lowest_free()
            for ip in shared:
                if rng.contains(ip) and (best is None or int(ip) < best) and self._conflict(ip, service) is None:
                    best = int(ip)
            if best is not None:
                return ipaddress.IPv4Address(best) if version == 4 else ipaddress.IPv6Address(best)
        return None

    def _allocate(self, service: model.Service, pools: list[_Pool]) -> Assignment | None:
        families, policy = service.ip_families, service.ip_family_policy
        first_primary: tuple[_Pool, IPAddress] | None = None
        first_secondary: tuple[_Pool, IPAddress] | None = None
        for pool in pools:
            primary = self._find(pool, families[0], service)
            if policy is model.IPFamilyPolicy.SINGLE_STACK:
                if primary is not None:
                    return self._commit(service, pool, (primary,))
                continue
            secondary = self._find(pool, families[1], service)
            if primary is not None and secondary is not None:
                return self._commit(service, pool, (primary, secondary))
            if primary is not None and first_primary is None:
                first_primary = (pool, primary)
            if secondary is not None and first_secondary is None:
                first_secondary = (pool, secondary)
        if policy is model.IPFamilyPolicy.PREFER_DUAL_STACK:
            # No pool has both: the first pool with the primary family, else the first with the secondary.
            for found in (first_primary, first_secondary):
                if found is not None:
                    return self._commit(service, found[0], (found[1],))
        return None

    def _not_allowed(self, service: model.Service, pool: _Pool) -> Pending:
        reason = f"pool {pool.name} does not serve {service.key} (its serviceAllocation excludes it)"
        return Pending(service.key, PendingCode.NOT_ALLOWED, reason)

    def _no_free_ip(self, service: model.Service, pools: list[_Pool]) -> Pending:
        names = ", ".join(p.name for p in pools)
        where = f"pool {names}" if len(pools) == 1 else f"pools {names}"
        if service.ip_family_policy is model.IPFamilyPolicy.REQUIRE_DUAL_STACK:
            what = "IPv4+IPv6 pair"
        elif service.ip_family_policy is model.IPFamilyPolicy.SINGLE_STACK and service.ip_families[0] == 6:
            what = "IPv6"
        else:
            what = "IP"
        return Pending(service.key, PendingCode.NO_FREE_IP, f"no free {what} in {where}")

    def _commit(self, service: model.Service, pool: _Pool, ips: tuple[IPAddress, ...]) -> Assignment:
        self._register(service.key, _Alloc(pool.name, ips, service.port_keys, service.sharing_key))
        return Assignment(service.key, pool.name, ips)

    def _assign_requested(self, service: model.Service) -> Assignment | Pending:
        key, ips = service.key, service.requested_ips
        pool = self._pool_holding(ips)
        if pool is not None and service.address_pool and pool.name != service.address_pool:
            return Pending(
                key,
                PendingCode.POOL_MISMATCH,
                f"requested IP {_ips_text(ips)} is in pool {pool.name}, not in pool {service.address_pool}",
            )
        if pool is not None and not self._compatible(pool, service):
            return self._not_allowed(service, pool)
        return self._take(service, ips, what="requested IP")

    def _take(self, service: model.Service, ips: tuple[IPAddress, ...], *, what: str) -> Assignment | Pending:
        key = service.key
        pool = self._pool_holding(ips)
        if pool is None:
            for ip in ips:
                owner = self._pool_holding((ip,))
                if owner is None:
                    buggy = next((p.name for p in self._pools.values() if _in_any_range(p, ip)), None)
                    hint = f" (pool {buggy} avoids .0 and .255)" if buggy else ""
                    return Pending(key, PendingCode.NOT_IN_POOL, f"{what} {ip} is in no pool{hint}")
            return Pending(key, PendingCode.NOT_IN_POOL, f"{what}s {_ips_text(ips)} are not in one pool")
        for ip in ips:
            why = self._conflict(ip, service)
            if why is not None:
                return Pending(key, PendingCode.IP_TAKEN, f"{what} {ip} is {why}")
        return self._commit(service, pool, ips)

    def _register(self, key: str, alloc: _Alloc) -> None:
        self._allocs[key] = alloc
        pool = self._pools[alloc.pool]
        for ip in alloc.ips:
            use = self._ips.get(ip)
            if use is None:
                use = self._ips[ip] = _IpUse(alloc.pool, alloc.sharing_key, {})
                rng = pool.range_for(ip)
                assert rng is not None, f"{ip} is not in pool {alloc.pool}"
                rng.take(int(ip))
                if alloc.sharing_key:
                    self._shared.setdefault((alloc.pool, alloc.sharing_key), set()).add(ip)
            use.users[key] = alloc.ports

    def _unregister(self, key: str) -> None:
        alloc = self._allocs.pop(key)
        pool = self._pools[alloc.pool]
        for ip in alloc.ips:
            use = self._ips[ip]
            del use.users[key]
            if use.users:
                continue
            del self._ips[ip]
            if use.sharing_key:
                shared = self._shared[(use.pool, use.sharing_key)]
                shared.discard(ip)
                if not shared:
                    del self._shared[(use.pool, use.sharing_key)]
            rng = pool.range_for(ip)
            if rng is not None:
                rng.give(int(ip))


def _priority_rank(pool: _Pool) -> tuple[int, int]:
    """Lower priority value first; 0 (unset) after every pool that has one."""
    sa = pool.spec.service_allocation
    prio = sa.priority if sa else 0
    return (0, prio) if prio > 0 else (1, 0)


def _in_any_range(pool: _Pool, ip: IPAddress) -> bool:
    return any(r.contains(ip) for r in pool.ranges)
