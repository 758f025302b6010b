"""The `memtrace` command's end (`cli.main.leave`): the same output and exit codes as an ordinary exit, the
`atexit` handlers run, and a non-daemon thread still running is waited for; the interpreter's teardown alone
is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memtrace.cli.main import _status, main

BUILDERS = textwrap.dedent(
    """
    import atexit, os, threading, time
    from pathlib import Path
    from torch import nn

    def mlp():
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def with_atexit():
        atexit.register(lambda: Path(os.environ["MARK"]).write_text("atexit ran"))
        return mlp()

    def with_thread():
        def late():
            time.sleep(0.5)
            Path(os.environ["MARK"]).write_text("thread finished")
        threading.Thread(target=late).start()
        return mlp()
    """
)


def _command(tmp_path: Path, builder: str, *args: str) -> subprocess.CompletedProcess[str]:
    models = tmp_path / "models.py"
    models.write_text(BUILDERS)
    cmd = [sys.executable, "-m", "memtrace.cli.main", f"{models}:{builder}", *args]
    env_mark = {"MARK": str(tmp_path / "mark")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **env_mark})


def test_the_command_prints_what_main_returns_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = _command(tmp_path, "mlp", "--input", "2x16", "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    main([f"{tmp_path / 'models.py'}:mlp", "--input", "2x16", "--device", "cpu", "--json"])
    assert json.loads(done.stdout) == json.loads(capsys.readouterr().out)


def test_bad_input_still_exits_2_with_one_line(tmp_path: Path) -> None:
    done = _command(tmp_path, "mlp", "--input", "2x16", "--device", "tpu")
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("memtrace")]
    assert len(lines) == 1 and lines[0].startswith("memtrace: error: ")
    assert "Traceback" not in done.stderr


def test_atexit_handlers_run(tmp_path: Path) -> None:
    done = _command(tmp_path, "with_atexit", "--input", "2x16", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "mark").read_text() == "atexit ran"


def test_a_running_thread_is_waited_for(tmp_path: Path) -> None:
    done = _command(tmp_path, "with_thread", "--input", "2x16", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "mark").read_text() == "thread finished"


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), ("bye", 1)])
def test_status_reads_exit_codes_as_sys_exit_does(code: str | int | None, status: int) -> None:
    assert _status(code) == status
