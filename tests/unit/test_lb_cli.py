"""`metalhorn lb pools|services|get` and `apply` output against golden text in tests/unit/golden/
(METALHORN_UPDATE_GOLDEN=1 rewrites them). The input is what the real routes and controller produce for a small
cluster (fake clock, so times are fixed); the file loader handles multi-document YAML and `kind: List`."""

from __future__ import annotations

import argparse
import io
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_lb_api import Env, pool, service

from metalhorn.common import errors
from metalhorn.control.cli import common
from metalhorn.control.cli import lb as lb_cli

GOLDEN = pathlib.Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("METALHORN_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with METALHORN_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} differs from its golden file (METALHORN_UPDATE_GOLDEN=1 rewrites)"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Env]:
    env = Env()
    with env.client:
        answer = env.apply(
            pool("blue", "198.18.0.0/30", "2001:db8::/126", avoidBuggyIPs=True),
            pool("green", "198.18.1.0/24", autoAssign=False),
            pool("huge", "2001:db8:1::/64", autoAssign=False),
        )
        assert answer.status_code == 200, answer.text
        env.apply(service("web", ports=[{"port": 80}, {"port": 443}]))
        env.apply(service("api", namespace="prod", loadBalancerIP="198.18.1.10"))
        shared = {"metallb.io/allow-shared-ip": "dns", "metallb.io/address-pool": "green"}
        env.apply(service("dns-tcp", namespace="infra", annotations=shared, ports=[{"port": 53, "protocol": "TCP"}]))
        env.apply(service("dns-udp", namespace="infra", annotations=shared, ports=[{"port": 53, "protocol": "UDP"}]))
        env.apply(service("six", annotations={"metallb.io/address-pool": "huge"}, ipFamilies=["IPv6"]))
        env.apply(service("dual", ipFamilyPolicy="RequireDualStack"))
        env.apply(service("late"))
        env.apply(service("later"))
        env.apply(service("thief", loadBalancerIP="198.18.1.10"))
        env.client.put("/v1/lb/announcements/node-1", json={"l2": ["default/web", "default/dual"]})
        env.client.put("/v1/lb/announcements/node-2", json={"bgp": {"prod/api": ["tor-a", "tor-b"]}})
        yield env


def items(env: Env, path: str) -> Any:
    response = env.client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def test_lb_pools_golden(cluster: Env) -> None:
    check_golden("lb_pools.txt", lb_cli.pool_table(items(cluster, "/v1/lb/pools")["items"]) + "\n")


def test_lb_services_golden(cluster: Env) -> None:
    check_golden("lb_services.txt", lb_cli.service_table(items(cluster, "/v1/lb/services")["items"]) + "\n")


def test_lb_get_golden(cluster: Env) -> None:
    detail = lb_cli.service_detail(items(cluster, "/v1/lb/services/default/web"))
    pending = lb_cli.service_detail(items(cluster, "/v1/lb/services/default/thief"))
    check_golden("lb_get.txt", detail + "\n\n" + pending + "\n")


def emitted(fmt: str, data: Any, human: Callable[[Any], str]) -> str:
    out = io.StringIO()
    common.emit(argparse.Namespace(output=fmt), data, human, out=out)
    return out.getvalue()


def test_lb_services_json_and_yaml_are_the_records(cluster: Env) -> None:
    records = items(cluster, "/v1/lb/services")["items"]
    text = emitted("json", records, lb_cli.service_table)
    assert '"ingress": [' in text and '"announced_by"' in text
    assert "prod/api" in emitted("yaml", records, lb_cli.service_table)


def test_apply_output_golden() -> None:
    answer = {
        "results": [
            {"kind": "IPAddressPool", "namespace": "metallb-system", "name": "blue", "action": "created"},
            {"kind": "L2Advertisement", "namespace": "metallb-system", "name": "l2", "action": "unchanged"},
            {"kind": "Service", "namespace": "default", "name": "web", "action": "configured"},
        ],
        "dry_run": False,
    }
    check_golden(
        "lb_apply.txt", lb_cli.render_results(answer) + "\n" + lb_cli.render_results({**answer, "dry_run": True}) + "\n"
    )


@pytest.mark.parametrize(("n", "text"), [(0, "0"), (999_999, "999999"), (1 << 64, "2^64"), (3 * 10**20, "3.0e+20")])
def test_counts_stay_readable(n: int, text: str) -> None:
    assert lb_cli.count(n) == text


def test_load_files_reads_multi_document_yaml_and_lists(tmp_path: pathlib.Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n---\nkind: List\nitems:\n- {kind: X}\n- {kind: Y}\n"
    )
    b = tmp_path / "b.yaml"
    b.write_text("kind: Z\n")
    docs = lb_cli.load_files([str(a), str(b)])
    assert [d["kind"] for d in docs if isinstance(d, dict)] == ["Service", "X", "Y", "Z"]


def test_load_files_names_the_file_of_a_yaml_error(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    with pytest.raises(errors.InvalidArgument, match=r"bad\.yaml: YAML: line 2"):
        lb_cli.load_files([str(bad)])
    with pytest.raises(errors.InvalidArgument, match="cannot read"):
        lb_cli.load_files([str(tmp_path / "missing.yaml")])
