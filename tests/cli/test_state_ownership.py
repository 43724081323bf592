"""Each service owns its state directory: a second trainer, converter or gateway started on the
directory of a running one refuses to start, naming the holder, instead of recovering and driving
the same jobs, conversions and llama-servers a second time."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeline_cli.stack import ServiceProcess
from forgeline_kit.llamacpp.server import free_port

from .conftest import Stack


@pytest.mark.parametrize("name", ["trainer", "converter", "gateway"])
def test_a_second_instance_on_the_same_state_refuses_to_start(
    running: Stack, name: str, tmp_path: Path
) -> None:
    owner = running.stack.services[name]
    twin = ServiceProcess(
        name=name, env=dict(owner.env), log_path=tmp_path / f"{name}.log", port=0, metrics_port=0
    )
    twin.use_ports(free_port(), free_port())
    twin.start()
    assert twin.process is not None
    assert twin.process.wait(120) == 1
    assert owner.process is not None
    assert f"is in use by forgeline-{name} (pid {owner.process.pid} " in twin.log_tail()
    assert owner.alive()
    assert owner.ready()
