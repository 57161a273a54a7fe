"""The `metalhorn` entry point: every command is reachable, and data-path commands start light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metalhorn.daemons import main


def test_every_command_module_registers_its_commands() -> None:
    parser = main.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(main._COMMANDS) <= set(sub.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["replica", "engine", "snapshot"])
def test_data_path_commands_do_not_import_the_web_stack(command: str) -> None:
    code = (
        "import sys\n"
        "from metalhorn.daemons import main\n"
        f"main.build_parser(main._modules_for([{command!r}, '--help']))\n"
        "heavy = sorted(m for m in ('fastapi', 'httpx', 'uvicorn', 'pydantic') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unknown_command_falls_back_to_the_full_parser() -> None:
    assert main._modules_for(["nonsense"]) == main._COMMAND_MODULES
    assert main._modules_for(["--log-level", "DEBUG", "replica"]) == main._COMMAND_MODULES
    assert main._modules_for(["replica", "serve"]) == ("metalhorn.daemons.replica",)
