"""Fault injection: randomized rounds of replica/engine kills, SIGSTOP, dropped connections and full disks under a
write workload; zero acknowledged writes lost, read back through NBD and from every replica after every round.

FAULT_SEED=N reproduces a run (the seed is printed); FAULT_ROUNDS=N changes the number of rounds (CI: 20).
"""

from __future__ import annotations

import os
import pathlib
import random

from tests.linux import faults

SIZE = 16 << 20  # small volume: a rebuild takes well under a second, so 20 rounds fit in a few minutes
FS_SIZE = 96 << 20


def test_randomized_faults_lose_no_acknowledged_write(tmp_path: pathlib.Path) -> None:
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(1 << 31))
    rounds = int(os.environ.get("FAULT_ROUNDS") or 20)
    print(f"fault injection seed {seed} (rerun with FAULT_SEED={seed}), {rounds} rounds")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with faults.fault_volume(tmp_path, size=SIZE, fs_size=FS_SIZE) as volume:
        runner = faults.FaultRunner(volume, seed=seed, scratch=scratch, write_seconds=2.5, heal_timeout=60)
        summary = runner.run(rounds)
    print(summary.as_dict())
    assert summary.rounds == rounds
    assert summary.acknowledged > rounds * 50, "the workload should have written through every round"
    # A replica fault is absorbed by the engine; only a killed engine drops the client's connection.
    assert {kind for kind, count in summary.write_errors_by_fault.items() if count} <= {"kill-engine"}, summary
    if summary.salvages:
        print(f"salvaged (engine restarted after every replica went ERR): {summary.salvages}")
    assert summary.lost == [], f"seed {seed}: acknowledged writes lost:\n" + "\n".join(summary.lost[:20])
