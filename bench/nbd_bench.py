"""Storage data path benchmark: fio (libnbd engine) against nbdkit and metalhorn with 1 and 3 replicas.

Why side by side: on this kind of machine runs vary up to 2x from one minute to the next, so absolute figures
mean little. Each round starts (a) nbdkit's file plugin on a sparse file, (b) metalhorn with one replica and
(c) metalhorn with three, one after the other on fresh volumes, runs the same fio jobs on each and reports
(b)/(a) and (c)/(a). `--repeat 2` runs two rounds so the spread is visible.

Every child process is started and stopped here by its PID; every wait is bounded; the work directory is
removed on exit, failure and Ctrl-C. Only loopback addresses are used.

    bench/nbd_bench                 # full run: 1 GiB, 20 s per job, writes bench/results and BENCHMARKS.md
    bench/nbd_bench --quick         # 256 MiB, 5 s per job, prints only
    bench/nbd_bench --repeat 2 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import pstats
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SECTION = "## Storage data path (NBD)"
HOST = "127.0.0.1"
VOLUME = "benchvol"


# ---------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    key: str
    column: str  # table column heading
    replicas: int  # 0 = the nbdkit reference


TARGETS = (
    Target("ref", "(a) nbdkit file", 0),
    Target("mh1", "(b) metalhorn 1 replica", 1),
    Target("mh3", "(c) metalhorn 3 replicas", 3),
)


@dataclass(frozen=True)
class Settings:
    size: int
    runtime: int
    ramp: int
    metalhorn: list[str]
    python: str
    workdir: Path
    start_timeout: float
    nbdkit_threads: int
    engine_args: list[str]
    replica_args: list[str]
    env: dict[str, str] | None = None  # for metalhorn processes: PYTHONPATH of an exported --revision


@dataclass
class Running:
    uri: str
    engine: common.Child | None
    children: list[common.Child] = field(default_factory=list)


def _replica_argv(settings: Settings, directory: Path, port: int) -> list[str]:
    return [
        *settings.metalhorn,
        "replica",
        "serve",
        str(directory),
        "--size",
        str(settings.size),
        "--listen",
        f"{HOST}:{port}",
        *settings.replica_args,
    ]


def _engine_argv(settings: Settings, replica_ports: Sequence[int], port: int, *, profile_out: Path | None) -> list[str]:
    args = ["engine", "serve", VOLUME, "--size", str(settings.size)]
    for replica_port in replica_ports:
        args += ["--replica", f"tcp://{HOST}:{replica_port}"]
    args += ["--frontend", "nbd", "--listen", f"{HOST}:{port}", *settings.engine_args]
    if profile_out is None:
        return [*settings.metalhorn, *args]
    return [settings.python, "-c", _CPROFILE_WRAPPER, str(profile_out), *args]


# Runs the engine with a profiler that records only between SIGUSR1 and SIGUSR2, so start-up and the other jobs
# stay out of the figures; SIGUSR2 writes the stats file.
_CPROFILE_WRAPPER = """
import cProfile, signal, sys
out = sys.argv[1]
prof = cProfile.Profile()
def _on(signum, frame):
    prof.enable()
def _off(signum, frame):
    prof.disable()
    prof.dump_stats(out + ".tmp")
    import os
    os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR1, _on)
signal.signal(signal.SIGUSR2, _off)
from metalhorn.daemons.main import main
sys.exit(main(sys.argv[2:]))
"""


@contextlib.contextmanager
def launch(target: Target, settings: Settings, *, tag: str, profile_out: Path | None = None) -> Iterator[Running]:
    """Start `target` on a fresh volume, wait until its NBD export answers, yield it, stop everything."""
    base = settings.workdir / tag
    base.mkdir(parents=True)
    children: list[common.Child] = []
    try:
        port = common.free_port(HOST)
        if target.replicas == 0:
            image = base / "disk.img"
            with open(image, "wb") as f:
                f.truncate(settings.size)
            argv = ["nbdkit", "--foreground", "--exit-with-parent", "-p", str(port), "-i", HOST]
            argv += ["-t", str(settings.nbdkit_threads), "file", str(image)]
            nbdkit = common.Child("nbdkit", argv, log_path=base / "nbdkit.log").start()
            children.append(nbdkit)
            running = Running(uri=f"nbd://{HOST}:{port}/{VOLUME}", engine=None, children=children)
        else:
            replica_ports = []
            for index in range(target.replicas):
                directory = base / f"replica-{index}"
                directory.mkdir()
                replica_port = common.free_port(HOST)
                replica = common.Child(
                    f"replica-{index}",
                    _replica_argv(settings, directory, replica_port),
                    log_path=base / f"replica-{index}.log",
                    env=settings.env,
                ).start()
                children.append(replica)
                replica_ports.append(replica_port)
            for index, (replica, replica_port) in enumerate(zip(children, replica_ports, strict=True)):
                common.wait_until(
                    f"replica-{index} on port {replica_port}",
                    lambda p=replica_port: common.tcp_accepts(HOST, p),
                    timeout=settings.start_timeout,
                    children=[replica],
                )
            engine = common.Child(
                "engine",
                _engine_argv(settings, replica_ports, port, profile_out=profile_out),
                log_path=base / "engine.log",
                env=settings.env,
            ).start()
            children.append(engine)
            running = Running(uri=f"nbd://{HOST}:{port}/{VOLUME}", engine=engine, children=children)
        took = common.wait_until(
            f"{target.key} NBD export {running.uri}",
            lambda: common.tcp_accepts(HOST, port) and common.nbd_ready(running.uri, expect_size=settings.size),
            timeout=settings.start_timeout,
            children=children,
        )
        print(f"  {target.column}: ready in {took:.1f} s at {running.uri}", flush=True)
        yield running
        for child in children:
            if not child.alive():
                raise common.BenchError(f"{child.name} died during the run:\n{child.tail()}")
    finally:
        # Engine first, then replicas: the reverse of start order.
        for child in reversed(children):
            child.stop(grace=10.0)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- fio jobs


@dataclass(frozen=True)
class Job:
    key: str
    rw: str
    bs: str
    iodepth: int
    timed: bool  # time_based for --runtime seconds; otherwise one pass over the volume


FILL = Job("fill_1m_qd8", "write", "1M", 8, timed=False)
JOBS = (
    FILL,  # first, so random reads hit data and every target overwrites allocated blocks
    Job("randwrite_4k_qd32", "randwrite", "4k", 32, timed=True),
    Job("randread_4k_qd32", "randread", "4k", 32, timed=True),
    Job("seqwrite_1m_qd8", "write", "1M", 8, timed=True),
    Job("seqread_1m_qd8", "read", "1M", 8, timed=True),
    Job("randwrite_4k_qd1", "randwrite", "4k", 1, timed=True),
)
PROFILE_JOB = JOBS[1]


def run_fio(job: Job, uri: str, settings: Settings, *, out: Path) -> dict[str, Any]:
    argv = [
        "fio",
        f"--name={job.key}",
        "--ioengine=nbd",
        f"--uri={uri}",
        f"--rw={job.rw}",
        f"--bs={job.bs}",
        f"--iodepth={job.iodepth}",
        "--numjobs=1",
        "--randrepeat=0",
        "--norandommap",
        "--percentile_list=50:90:99:99.9",
        "--output-format=json",
        f"--output={out}",
    ]
    if job.timed:
        argv += ["--time_based", f"--runtime={settings.runtime}", f"--ramp_time={settings.ramp}"]
        timeout = settings.runtime + settings.ramp + 60
    else:
        timeout = 120 + settings.size / (4 << 20)  # a one-pass fill at no less than 4 MiB/s
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, start_new_session=True
        )
    except subprocess.TimeoutExpired as exc:
        raise common.BenchError(f"fio {job.key} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise common.BenchError(f"fio {job.key} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    try:
        result: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        raise common.BenchError(f"fio {job.key} wrote no JSON: {done.stderr[-2000:]}") from exc
    return result


def metrics(job: Job, fio: dict[str, Any]) -> dict[str, float]:
    data = fio["jobs"][0]["write" if "write" in job.rw else "read"]
    pct = data.get("clat_ns", {}).get("percentile", {})
    found = {
        "iops": float(data["iops"]),
        "mib_s": float(data["bw_bytes"]) / (1 << 20),
        "p50_us": float(pct.get("50.000000", 0)) / 1000,
        "p99_us": float(pct.get("99.000000", 0)) / 1000,
    }
    if data.get("total_ios", 0) == 0:
        raise common.BenchError(f"fio {job.key} completed no I/O")
    return found


def run_job(job: Job, running: Running, settings: Settings, *, out: Path) -> dict[str, Any]:
    """One fio job with the CPU seconds each server process spent meanwhile (where the 2 cores went)."""
    before = {c.name: c.cpu_seconds() for c in running.children}
    fio = run_fio(job, running.uri, settings, out=out)
    cpu = {}
    for child in running.children:
        start, end = before.get(child.name), child.cpu_seconds()
        if start is not None and end is not None:
            cpu[child.name] = round(end - start, 2)
    jobs = fio["jobs"][0]
    cpu["fio"] = round((jobs["usr_cpu"] + jobs["sys_cpu"]) / 100 * jobs["elapsed"], 2)
    found = metrics(job, fio)
    print(
        f"    {job.key:<18} {found['iops']:>9,.0f} IOPS {found['mib_s']:>8,.1f} MiB/s"
        f"  p50 {found['p50_us']:>7,.0f} µs  p99 {found['p99_us']:>7,.0f} µs  cpu s: "
        + " ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items()),
        flush=True,
    )
    return {"metrics": found, "cpu_seconds": cpu, "fio": fio}


# ---------------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Row:
    title: str
    job: str
    metric: str
    unit: str
    goal: float | None = None  # minimum (c)/(a)
    lower_is_better: bool = False


ROWS = (
    Row("4 KiB random write QD32", "randwrite_4k_qd32", "iops", "IOPS", goal=0.5),
    Row("4 KiB random read QD32", "randread_4k_qd32", "iops", "IOPS", goal=0.5),
    Row("1 MiB sequential write QD8", "seqwrite_1m_qd8", "mib_s", "MiB/s", goal=0.6),
    Row("1 MiB sequential read QD8", "seqread_1m_qd8", "mib_s", "MiB/s", goal=0.6),
    Row("4 KiB random write QD1", "randwrite_4k_qd1", "iops", "IOPS"),
    Row("4 KiB random write QD1 p50 latency", "randwrite_4k_qd1", "p50_us", "µs", lower_is_better=True),
    Row("4 KiB random write QD1 p99 latency", "randwrite_4k_qd1", "p99_us", "µs", lower_is_better=True),
    Row("first fill, 1 MiB sequential write QD8", "fill_1m_qd8", "mib_s", "MiB/s"),
)


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "MiB/s":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _lookup(rounds: list[dict[str, Any]], index: int, target: str, row: Row) -> float | None:
    entry = rounds[index]["targets"].get(target, {})
    job = entry.get("jobs", {}).get(row.job)
    if job is None:
        return None
    value: float = job["metrics"][row.metric]
    return value


def summarise(rounds: list[dict[str, Any]], targets: Sequence[Target]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table: per-round figures joined by ' / ', ratios to (a) likewise, and the goal verdicts."""
    keys = [t.key for t in targets]
    have_ref = "ref" in keys
    others = [t for t in targets if t.key != "ref"]
    head = ["workload", "unit", *[t.column for t in targets]]
    if have_ref:
        head += [f"{t.column[:3]}/(a)" for t in others]
        head += ["goal (c)/(a)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    records = []
    for row in ROWS:
        cells = [row.title + (" (lower is better)" if row.lower_is_better else ""), row.unit]
        record: dict[str, Any] = {"workload": row.title, "job": row.job, "metric": row.metric, "unit": row.unit}
        for t in targets:
            values = [_lookup(rounds, i, t.key, row) for i in range(len(rounds))]
            record[t.key] = values
            cells.append(" / ".join(_figure(v, row.unit) for v in values))
        if have_ref:
            for t in others:
                ratios = []
                for i in range(len(rounds)):
                    a, x = _lookup(rounds, i, "ref", row), _lookup(rounds, i, t.key, row)
                    ratios.append(x / a if a and x is not None else None)
                record[f"{t.key}/ref"] = ratios
                cells.append(" / ".join("—" if r is None else f"{r:.0%}" for r in ratios))
            verdict = ""
            mh3 = record.get("mh3/ref")
            if row.goal is not None:
                verdict = f"≥ {row.goal:.0%}"
                if mh3 is not None:
                    met = sum(1 for r in mh3 if r is not None and r >= row.goal)
                    verdict += f": met {met}/{len(mh3)}"
                    record["goal_met_rounds"] = met
                record["goal"] = row.goal
            cells.append(verdict)
        lines.append("| " + " | ".join(cells) + " |")
        records.append(record)
    return "\n".join(lines), records


# ---------------------------------------------------------------------------------------------------- profiling


def _pyspy_binary(workdir: Path) -> str:
    """py-spy from PATH, else pip-installed into the throwaway work directory (never into the project)."""
    found = shutil.which("py-spy")
    if found:
        return found
    target = workdir / "py-spy"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), "py-spy"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    binary = target / "bin" / "py-spy"
    if done.returncode != 0 or not binary.exists():
        raise common.BenchError(f"could not pip-install py-spy: {done.stderr[-1000:]}")
    return str(binary)


def _pyspy_report(raw: Path, top: int) -> str:
    """Cumulative and self share of samples per function, from py-spy's collapsed-stack output."""
    cumulative: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]  # outermost first; no thread entry without --threads
        for frame in set(frames):
            cumulative[frame] = cumulative.get(frame, 0) + count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
    if total == 0:
        return "py-spy recorded no busy samples"
    out = [f"py-spy: {total} busy samples", "", "  cum%   self%  function"]
    for frame, count in sorted(cumulative.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{count / total:6.1%} {own.get(frame, 0) / total:6.1%}  {frame}")
    out += ["", "top by self time:", "  self%  function"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{count / total:6.1%}  {frame}")
    return "\n".join(out)


def profile_engine(settings: Settings, *, tool: str, top: int) -> str:
    """Run the 3-replica 4 KiB random-write job once more with the engine profiled; return the report."""
    target = next(t for t in TARGETS if t.key == "mh3")
    prof_dir = settings.workdir / "profile-out"
    prof_dir.mkdir(exist_ok=True)
    stats = prof_dir / "engine.prof"
    print(f"\n== profile ({tool}) of the engine during {PROFILE_JOB.key} with 3 replicas", flush=True)
    pyspy = _pyspy_binary(settings.workdir) if tool == "py-spy" else None
    with launch(target, settings, tag="profile", profile_out=stats if tool == "cprofile" else None) as running:
        assert running.engine is not None
        if tool == "cprofile":
            running.engine.send(signal.SIGUSR1)
            window = time.monotonic()
            fio = run_fio(PROFILE_JOB, running.uri, settings, out=prof_dir / "fio.json")
            running.engine.send(signal.SIGUSR2)
            window = time.monotonic() - window
            common.wait_until("the engine's profile", stats.exists, timeout=30, children=[running.engine])
            text = io.StringIO()
            st = pstats.Stats(str(stats), stream=text)
            st.strip_dirs().sort_stats("cumulative").print_stats(top)
            text.write("\ntop by own time (tottime):\n")
            st.sort_stats("tottime").print_stats(top)
            report = f"profiled window {window:.1f} s of wall time\n" + "\n".join(
                line for line in text.getvalue().splitlines() if str(stats) not in line
            )
        else:
            assert pyspy is not None
            raw = prof_dir / "engine.pyspy.txt"
            duration = settings.runtime + settings.ramp
            spy = common.Child(
                "py-spy",
                [
                    *(pyspy, "record", "--pid", str(running.engine.pid), "--duration", str(duration)),
                    *("--rate", "250", "--format", "raw", "--function", "--nonblocking", "--output", str(raw)),
                ],
                log_path=prof_dir / "py-spy.log",
            ).start()
            try:
                fio = run_fio(PROFILE_JOB, running.uri, settings, out=prof_dir / "fio.json")
                common.wait_until("py-spy to finish", lambda: not spy.alive(), timeout=duration + 30)
            finally:
                spy.stop(grace=5.0, signum=signal.SIGINT)
            if not raw.exists():
                raise common.BenchError(f"py-spy wrote nothing:\n{spy.tail()}")
            report = _pyspy_report(raw, top)
    iops = metrics(PROFILE_JOB, fio)["iops"]
    return f"engine profile ({tool}), {PROFILE_JOB.key}, 3 replicas, {iops:,.0f} IOPS while profiled\n\n{report}"


# ---------------------------------------------------------------------------------------------------- output


def _git_revision() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def export_revision(revision: str, into: Path) -> str:
    """Unpack `revision`'s src/ into `into` (git archive), so a run measures one commit, not files mid-edit."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if sha.returncode != 0:
        raise common.BenchError(f"unknown revision {revision!r}: {sha.stderr.strip()}")
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", sha.stdout.strip(), "src"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if archive.returncode != 0:
        raise common.BenchError(f"git archive {revision} failed: {archive.stderr.decode(errors='replace')}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return sha.stdout.strip()


def _machine_line(machine: dict[str, Any]) -> str:
    return f"{machine['cpus']} cores ({machine['cpu_model']}), {machine['mem_gib']} GiB RAM, {machine['kernel']}"


def _load_range(report: dict[str, Any]) -> str:
    loads = [x for rnd in report["rounds"] for entry in rnd["targets"].values() for x in entry.get("loadavg", [])]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "unknown"


def render_cpu(report: dict[str, Any]) -> str:
    """Per round, the CPU seconds each process spent per job, next to the core-seconds the job had (2 x wall)."""
    out = ["### CPU seconds per job (where the cores went)", ""]
    cores = report["machine"]["cpus"] or 1
    for rnd in report["rounds"]:
        targets = rnd["targets"]
        head = ["job", *[entry["column"] for entry in targets.values()]]
        out += [f"Round {rnd['round']}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for job in JOBS:
            cells = [job.key]
            for entry in targets.values():
                found = entry["jobs"].get(job.key)
                if found is None:
                    cells.append("—")
                    continue
                cpu = found["cpu_seconds"]
                replicas = sum(v for k, v in cpu.items() if k.startswith("replica"))
                parts = [f"{k} {v:.1f}" for k, v in cpu.items() if not k.startswith("replica")]
                if replicas:
                    parts.insert(0, f"replicas {replicas:.1f}")
                wall = found["fio"]["jobs"][0]["elapsed"]
                cells.append(", ".join(parts) + f" (of {cores * wall:.0f})")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def render_markdown(report: dict[str, Any], table: str) -> str:
    opts = report["options"]
    return "\n".join(
        [
            f"{SECTION}",
            "",
            f"Run {report['date']} on {_machine_line(report['machine'])}; metalhorn {report['revision']}, "
            f"{report['tools']['fio']}, {report['tools']['nbdkit']}. `bench/nbd_bench` — fio libnbd engine, "
            f"one connection, {opts['size_mib']} MiB volume, {opts['runtime']} s per job after {opts['ramp']} s "
            f"ramp, volume filled sequentially first. {len(report['rounds'])} round(s) side by side; each cell "
            "shows round 1 / round 2 / …. Goals: (c) ≥ 50 % of (a) on 4 KiB random IOPS, ≥ 60 % on sequential "
            f"bandwidth. 1-minute load average during the run {_load_range(report)} (the machine is shared, so "
            "only the side-by-side ratios mean much).",
            "",
            table,
            "",
            f"Raw fio JSON, CPU seconds per process and the engine profile: `bench/results/{report['stem']}.json`"
            f" and `.md`.{_earlier_runs(report['stem'])}",
            "",
        ]
    )


def _earlier_runs(stem: str) -> str:
    earlier = sorted(p.stem for p in RESULTS.glob("nbd_bench-*.json") if p.stem < stem)
    return (" Earlier runs: " + ", ".join(f"`{name}`" for name in earlier) + ".") if earlier else ""


def write_markdown(report: dict[str, Any], table: str) -> None:
    """bench/results/<stem>.md (table, CPU per process, profile) and the section of BENCHMARKS.md."""
    section = render_markdown(report, table)
    md = section + "\n" + render_cpu(report)
    if "profile" in report:
        md += "\n### Engine profile\n\n```\n" + report["profile"] + "\n```\n"
    (RESULTS / f"{report['stem']}.md").write_text(md)
    update_benchmarks_md(section)
    print(f"wrote {RESULTS / report['stem']}.json, .md and updated {BENCHMARKS_MD.name}", flush=True)


def rerender(path: Path) -> int:
    """Rebuild the .md and the BENCHMARKS.md section from a saved result JSON (no benchmark is run)."""
    report = json.loads(path.read_text())
    targets = [t for t in TARGETS if t.key in report["options"]["targets"]]
    table, _ = summarise(report["rounds"], targets)
    write_markdown(report, table)
    return 0


def update_benchmarks_md(section: str) -> None:
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCHMARKS_MD.write_text(text.rstrip("\n") + "\n")


# ---------------------------------------------------------------------------------------------------- main


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", text, re.I)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 1G or 256M")
    return int(match.group(1)) << (10 * " KMGT".index((match.group(2) or " ").upper()))


def build_parser() -> argparse.ArgumentParser:
    venv_metalhorn = REPO / ".venv" / "bin" / "metalhorn"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=None, help="volume size (default 1G, 256M with --quick)")
    parser.add_argument("--runtime", type=int, default=None, help="seconds per timed job (default 20, 5 with --quick)")
    parser.add_argument("--ramp", type=int, default=None, help="fio ramp seconds before measuring (default 2, 1 quick)")
    parser.add_argument("--quick", action="store_true", help="small and short; prints only unless --record")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all targets side by side (default 1)")
    parser.add_argument(
        "--targets", default="ref,mh1,mh3", help="comma list of ref (nbdkit), mh1, mh3 (default all three)"
    )
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write bench/results and update BENCHMARKS.md (default: yes unless --quick)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cprofile",
        choices=["cprofile", "py-spy"],
        default=None,
        help="also profile the engine during the 3-replica 4 KiB random-write job",
    )
    parser.add_argument("--profile-top", type=int, default=30, help="functions to list in the profile")
    parser.add_argument(
        "--metalhorn",
        default=str(venv_metalhorn) if venv_metalhorn.exists() else None,
        help="command that runs metalhorn (default .venv/bin/metalhorn or python -m)",
    )
    parser.add_argument(
        "--revision",
        default=None,
        help="run metalhorn from this git revision's src/ (exported to the work dir) instead of the working tree",
    )
    parser.add_argument("--render", type=Path, default=None, help="only rebuild the markdown from a result JSON")
    parser.add_argument("--python", default=None, help="python for the profiled engine (default: metalhorn's venv)")
    parser.add_argument("--engine-arg", action="append", default=[], help="extra argument for engine serve")
    parser.add_argument("--replica-arg", action="append", default=[], help="extra argument for replica serve")
    parser.add_argument("--nbdkit-threads", type=int, default=16)
    parser.add_argument("--start-timeout", type=float, default=30.0, help="seconds a target may take to be ready")
    parser.add_argument("--workdir", type=Path, default=None, help="parent for the temporary directory")
    parser.add_argument(
        "--keep-going",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record a failed target and go on with the next (default yes)",
    )
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        return rerender(args.render)
    wanted = [k.strip() for k in args.targets.split(",") if k.strip()]
    unknown = set(wanted) - {t.key for t in TARGETS}
    if unknown or not wanted:
        print(f"nbd_bench: unknown targets {sorted(unknown)}; choose from ref, mh1, mh3", file=sys.stderr)
        return 2
    targets = [t for t in TARGETS if t.key in wanted]
    for tool in ("fio", "nbdkit", "nbdinfo"):
        if shutil.which(tool) is None:
            print(f"nbd_bench: {tool} is not installed", file=sys.stderr)
            return 2
    record = (not args.quick) if args.record is None else args.record
    metalhorn = shlex.split(args.metalhorn) if args.metalhorn else [sys.executable, "-m", "metalhorn.daemons.main"]
    python = args.python
    if args.revision and python is None:
        sibling = REPO / ".venv" / "bin" / "python"
        python = str(sibling) if sibling.exists() else sys.executable
        metalhorn = [python, "-m", "metalhorn.daemons.main"]
    if python is None:
        sibling = Path(metalhorn[0]).parent / "python"
        python = str(sibling) if len(metalhorn) == 1 and sibling.exists() else sys.executable

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job ignores it
        signal.signal(signum, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="nbd_bench-", dir=args.workdir))
    env, revision = None, _git_revision()
    if args.revision:
        try:
            revision = export_revision(args.revision, workdir / "metalhorn-src")
        except (common.BenchError, KeyboardInterrupt) as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"nbd_bench: {exc}", file=sys.stderr)
            return 1
        env = {**os.environ, "PYTHONPATH": str(workdir / "metalhorn-src" / "src")}
    settings = Settings(
        size=args.size or ((256 << 20) if args.quick else (1 << 30)),
        runtime=args.runtime or (5 if args.quick else 20),
        ramp=args.ramp if args.ramp is not None else (1 if args.quick else 2),
        metalhorn=metalhorn,
        python=python,
        workdir=workdir,
        start_timeout=args.start_timeout,
        nbdkit_threads=args.nbdkit_threads,
        engine_args=args.engine_arg,
        replica_args=args.replica_arg,
        env=env,
    )
    now = dt.datetime.now().astimezone()
    stem = f"nbd_bench-{now:%Y-%m-%d-%H%M}"
    report: dict[str, Any] = {
        "stem": stem,
        "date": f"{now:%Y-%m-%d %H:%M %Z}",
        "machine": common.machine_info(),
        "revision": revision,
        "tools": {
            "fio": common.tool_version(["fio", "--version"]),
            "nbdkit": common.tool_version(["nbdkit", "--version"]),
        },
        "options": {
            "size_mib": settings.size >> 20,
            "runtime": settings.runtime,
            "ramp": settings.ramp,
            "repeat": args.repeat,
            "targets": wanted,
            "metalhorn": metalhorn,
            "nbdkit_threads": settings.nbdkit_threads,
        },
        "rounds": [],
    }
    failures = 0
    try:
        for round_no in range(1, args.repeat + 1):
            rnd: dict[str, Any] = {"round": round_no, "targets": {}}
            report["rounds"].append(rnd)
            for target in targets:
                print(f"== round {round_no}/{args.repeat}: {target.column}", flush=True)
                entry: dict[str, Any] = {"column": target.column, "jobs": {}, "loadavg": [os.getloadavg()[0]]}
                rnd["targets"][target.key] = entry
                try:
                    with launch(target, settings, tag=f"r{round_no}-{target.key}") as running:
                        for job in JOBS:
                            out = workdir / f"r{round_no}-{target.key}-{job.key}.json"
                            entry["jobs"][job.key] = run_job(job, running, settings, out=out)
                    entry["loadavg"].append(os.getloadavg()[0])
                except common.BenchError as exc:
                    failures += 1
                    entry["error"] = str(exc)
                    print(f"  FAILED {target.column}: {exc}", file=sys.stderr, flush=True)
                    if not args.keep_going:
                        raise
        table, summary = summarise(report["rounds"], targets)
        report["summary"] = summary
        print("\n" + table + "\n", flush=True)
        if args.profile:
            try:
                report["profile"] = profile_engine(settings, tool=args.profile, top=args.profile_top)
                print(report["profile"], flush=True)
            except common.BenchError as exc:
                failures += 1
                print(f"profile FAILED: {exc}", file=sys.stderr, flush=True)
        if record:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
            write_markdown(report, table)
    except KeyboardInterrupt:
        print("\nnbd_bench: interrupted; stopping everything", file=sys.stderr)
        return 130
    except common.BenchError as exc:
        print(f"nbd_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
