"""The pytest plugin, run from pytest itself (pytester, in a subprocess as a user's run loads it: by its entry
point): the limit one byte on each side of the simulated peak, the failure's breakdown and dominant layer,
the `memtrace_peak` fixture, and a load that imports no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import memtrace

pytest_plugins = ["pytester"]

MODEL = textwrap.dedent(
    """
    from torch import nn

    def build(width=256):
        return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 8))
    """
)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("plugin") / "model_under_test.py"
    path.write_text(MODEL)
    return f"{path}:build"


@pytest.fixture(scope="module")
def peaks(model_file: str) -> dict[str, int]:
    """The simulated peaks, computed before pytester snapshots this process's modules (it drops those
    imported later, and torch's operator libraries refuse to register twice)."""
    import torch

    # with a GPU here the plugin measures the cuda step too, on a GPU the simulation was not aimed at
    devices = ("cpu",) if torch.cuda.is_available() else ("cpu", "cuda")
    return {d: memtrace.simulate(model_file, ["16x64"], device=d).all_steps_peak_bytes for d in devices}


def test_one_byte_on_each_side_of_the_limit(
    pytester: pytest.Pytester, model_file: str, peaks: dict[str, int]
) -> None:
    tests = [
        f"""
        @pytest.mark.memtrace_limit({limit!r}, model={model_file!r}, input="16x64", device={device!r})
        def test_{device}_{name}():
            pass
        """
        for device, peak in peaks.items()
        for name, limit in (("at_the_peak", f"{peak} B"), ("one_byte_under", peak - 1))
    ]
    pytester.makepyfile("import pytest\n" + "".join(textwrap.dedent(t) for t in tests))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(peaks), failed=len(peaks))
    for device, peak in peaks.items():
        result.stdout.fnmatch_lines(
            [
                f"*step of Sequential on {device} needs {peak:,} B*over the limit of {peak - 1:,} B*by 1 B*",
                "*Live at the peak, by category*",
                "*optimizer state*",
                "Dominant: * holds *of the peak",
            ]
        )
    result.stdout.fnmatch_lines([f"*FAILED*test_{device}_one_byte_under*" for device in peaks])
    assert "Dominant: 0 (Linear)" in result.stdout.str()  # on cpu the first layer's weights and state


def test_the_fixture_returns_the_simulated_result(
    pytester: pytest.Pytester, model_file: str, peaks: dict[str, int]
) -> None:
    peak = peaks["cpu"]
    pytester.makepyfile(
        f"""
        import pytest

        def test_direct(memtrace_peak):
            result = memtrace_peak({model_file!r}, "16x64", device="cpu")
            assert result.all_steps_peak_bytes == {peak}

        @pytest.mark.memtrace_limit("1 GiB", model={model_file!r}, input="16x64", device="cpu")
        def test_from_the_marker(memtrace_peak):
            wider = memtrace_peak(args={{"width": 512}})
            assert wider.all_steps_peak_bytes > {peak}
            assert memtrace_peak().all_steps_peak_bytes == {peak}
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_gpu_the_step_does_not_fit_and_bad_markers(pytester: pytest.Pytester, model_file: str) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.memtrace_limit(model={model_file!r}, input="16x64", gpu="1MB", headroom="0")
        def test_too_small_a_gpu():
            pass

        @pytest.mark.memtrace_limit("1 GiB", model={model_file!r}, input="16x64", colour="red")
        def test_unknown_option():
            pass

        @pytest.mark.memtrace_limit("12 parsecs", model={model_file!r}, input="16x64")
        def test_bad_limit():
            pass

        @pytest.mark.memtrace_limit("1 GiB", model={model_file!r}, input="16x64")
        def test_the_body_fails_first():
            assert False, "the body's own failure"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "*memtrace_limit: the simulated step*over the limit of*",
            "*memtrace_limit:*colour*",
            "*memtrace_limit: malformed size '12 parsecs'*",
            "*the body's own failure*",
        ]
    )


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.memtrace_limit(limit, *, model*"])


def test_loading_the_plugin_imports_no_torch() -> None:
    code = "import sys, memtrace.pytest_plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_entry_point_names_the_plugin() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert names.get("memtrace") == "memtrace.pytest_plugin"
    assert Path(memtrace.__file__).parent.joinpath("pytest_plugin.py").is_file()
