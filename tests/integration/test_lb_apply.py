"""A real `metalhorn manager` process driven by the real CLI: every documented MetalLB example applies and
deletes, services get IPs, a bad file is refused naming object and field and changes nothing, `lb pools` and
`lb services` show the result, and after a manager restart every service keeps its IP."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import httpx

from tests.integration import manager_proc

DATA = pathlib.Path(__file__).parents[1] / "unit" / "data" / "metallb"
EXAMPLES = sorted(p for p in DATA.glob("*.yaml") if not p.name.startswith("service-"))
CLI_TIMEOUT = 60.0
SETTLE_TIMEOUT = 15.0

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  ports: [{port: 80}, {port: 443}]
endpoints: ["198.18.200.10:8080", "198.18.200.11:8080"]
---
apiVersion: v1
kind: Service
metadata: {name: pinned}
spec:
  type: LoadBalancer
  loadBalancerIP: 198.18.40.77
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: dns-tcp
  annotations: {metallb.io/allow-shared-ip: dns, metallb.io/address-pool: ipv4-pool}
spec: {type: LoadBalancer, ports: [{port: 53, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata:
  name: dns-udp
  annotations: {metallb.io/allow-shared-ip: dns, metallb.io/address-pool: ipv4-pool}
spec: {type: LoadBalancer, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata:
  name: v6-only
  annotations: {metallb.io/address-pool: ipv6-pool}
spec: {type: LoadBalancer, ipFamilies: [IPv6], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: thief
spec: {type: LoadBalancer, loadBalancerIP: 198.18.40.77, ports: [{port: 80}]}
"""

LATE = """
apiVersion: v1
kind: Service
metadata: {name: late}
spec: {type: LoadBalancer, ports: [{port: 8080}]}
"""

BAD = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: extra}
spec: {addresses: [198.18.60.0/24]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: broken}
spec: {addresses: [198.18.61.9-198.18.61.1]}
"""


class Cli:
    def __init__(self, manager: manager_proc.RunningManager) -> None:
        self.env = {
            **os.environ,
            "METALHORN_MANAGER": manager.url,
            "METALHORN_TOKEN_FILE": str(manager.state_dir / "token"),
        }
        self.manager = manager

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "metalhorn", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        if ok:
            assert result.returncode == 0, f"metalhorn {' '.join(args)}: {result.stdout}{result.stderr}"
        return result

    def services(self) -> dict[str, dict[str, Any]]:
        records = json.loads(self.run("lb", "services", "-o", "json").stdout)
        return {r["name"]: r["status"] for r in records}

    def settled(self, names: set[str]) -> dict[str, dict[str, Any]]:
        """Wait (bounded) until the controller has given every named service a state."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            response = httpx.get(f"{self.manager.url}/v1/lb/services", headers=self.manager.headers, timeout=5)
            statuses = {r["name"]: r["status"] for r in response.json()["items"]}
            if set(statuses) == names and all(s.get("state") for s in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                raise AssertionError(f"services did not settle within {SETTLE_TIMEOUT}s: {statuses}")
            time.sleep(0.1)


def ips(statuses: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    return {name: s.get("ingress", []) for name, s in statuses.items()}


def test_apply_examples_services_and_restart(tmp_path: pathlib.Path) -> None:
    state_dir = tmp_path / "manager"
    services_file = tmp_path / "services.yaml"
    services_file.write_text(SERVICES)
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(BAD)
    names = {"shop/web", "default/pinned", "default/dns-tcp", "default/dns-udp", "default/v6-only", "default/thief"}

    with manager_proc.running_manager(state_dir) as manager:
        cli = Cli(manager)
        for example in EXAMPLES:  # each documented example on its own: they reuse names like first-pool
            applied = cli.run("apply", "-f", str(example))
            assert " created" in applied.stdout
            cli.run("delete", "-f", str(example))
        assert json.loads(cli.run("lb", "config", "-o", "json").stdout) == []

        cli.run("apply", "-f", str(DATA / "dual-stack.yaml"), "-f", str(DATA / "service-dual-stack.yaml"))
        cli.run("apply", "-f", str(services_file))
        before = cli.settled(names | {"default/my-app"})
        assert before["default/pinned"]["ingress"] == ["198.18.40.77"]
        assert before["default/dns-tcp"]["ingress"] == before["default/dns-udp"]["ingress"] != []
        assert before["default/v6-only"]["ingress"][0].startswith("2001:db8:40::")
        assert before["default/my-app"]["ingress"] == ["2001:db8:41::10", "198.18.41.0"]
        assert before["default/thief"]["state"] == "pending"
        assert before["default/thief"]["reason"] == "requested IP 198.18.40.77 is taken by default/pinned"

        refused = cli.run("apply", "-f", str(bad_file), ok=False)
        assert refused.returncode == 1
        assert "IPAddressPool metallb-system/broken" in refused.stderr and "spec.addresses[0]" in refused.stderr
        pools = cli.run("lb", "pools").stdout
        assert "extra" not in pools and "ipv4-pool" in pools
        (v4_row,) = [line for line in pools.splitlines() if line.startswith("ipv4-pool ")]
        assert "2/256" in v4_row  # pinned + the shared DNS address, of 256
        table = cli.run("lb", "services").stdout
        assert "requested IP 198.18.40.77 is taken by default/pinned" in table
        assert "shop/web" in table and "198.18.40.77" in table

        # A deletion leaves a hole below a later service, which a fresh allocation would fill differently:
        # after the restart, `late` must still hold the address it got, not the lower one web left.
        (tmp_path / "late.yaml").write_text(LATE)
        cli.run("apply", "-f", str(tmp_path / "late.yaml"))
        names.add("default/late")
        late = cli.settled(names | {"default/my-app"})["default/late"]["ingress"]
        assert before["shop/web"]["ingress"] == ["198.18.41.1"] and late == ["198.18.41.2"]
        (tmp_path / "web.yaml").write_text(SERVICES.split("---", maxsplit=1)[0])
        cli.run("delete", "-f", str(tmp_path / "web.yaml"))
        names.discard("shop/web")
        before = cli.settled(names | {"default/my-app"})

    with manager_proc.running_manager(state_dir) as manager:
        cli = Cli(manager)
        after = cli.settled(names | {"default/my-app"})
        assert ips(after) == ips(before)
        assert after["default/late"]["ingress"] == ["198.18.41.2"]
        for name, status in after.items():
            assert not any("moved" in e["message"] for e in status.get("events", [])), (name, status["events"])
        cli.run("apply", "-f", str(tmp_path / "web.yaml"))
        again = cli.settled(names | {"default/my-app", "shop/web"})
        assert again["shop/web"]["state"] == "assigned"
        assert {k: v for k, v in ips(again).items() if k != "shop/web"} == ips(before)
