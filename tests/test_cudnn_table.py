"""Measured cuDNN convolution workspaces (tracer/devices/cuda/cudnn_table.py, conv.py) on synthetic tables:
the data format, the lookup (exact, nearest-shape range, another GPU's table) and the rule, whose exact
workspaces go through the caching allocator's replay. No GPU: the sizes are made up, the behaviour is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.devices.cuda import conv, cudnn_table
from memtrace.tracer.devices.cuda.cudnn_table import ConvKey, Table
from memtrace.tracer.simulate import simulate

MIB = 2**20


def _key(pass_: str, n: int = 2, c: int = 16, hw: int = 30, o: int = 8, dtype: str = "float32") -> ConvKey:
    return ConvKey(pass_, dtype, "nchw", n, c, hw, hw, o, 3, 3, (1, 1), (0, 0), (1, 1), 1)


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))


def _table(entries: dict[ConvKey, int], cc: str = "8.0", cudnn: int = 91002) -> Table:
    return Table(cc, cudnn, entries)


def test_key_round_trips_and_bad_keys_are_refused() -> None:
    key = _key("bwd_filter")
    assert ConvKey.parse(key.text()) == key
    assert key.text() == "bwd_filter|float32|nchw|2,16,30,30|8,3,3|1,1|0,0|1,1|1"
    assert key.output_hw() == (28, 28)
    for bad in ("fwd|float32", "sideways|float32|nchw|2,16,30,30|8,3,3|1,1|0,0|1,1|1"):
        with pytest.raises(ValueError):
            ConvKey.parse(bad)


def test_file_format_loads_and_malformed_files_fail_in_one_line(tmp_path: Path) -> None:
    entries = [{"key": _key("fwd").text(), "bytes": 7}]
    table = {"compute_capability": "9.0", "cudnn_version": 91900, "entries": entries}
    good = {"schema": 1, "kind": cudnn_table.KIND, "tables": [table]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(good))
    (table,) = cudnn_table.load(path)
    assert table.entries == {_key("fwd"): 7} and table.cudnn_version == 91900
    for bad in ({"schema": 2, "kind": cudnn_table.KIND}, {**good, "tables": [{"compute_capability": "9.0"}]}):
        path.write_text(json.dumps(bad))
        with pytest.raises(MemtraceError) as exc:
            cudnn_table.load(path)
        assert "\n" not in str(exc.value)
    path.write_text("{")
    with pytest.raises(MemtraceError, match="not JSON"):
        cudnn_table.load(path)
    assert cudnn_table.load() is not None  # the shipped file parses


def test_lookup_exact_range_and_other_gpu() -> None:
    a, b = _key("fwd", n=2), _key("fwd", n=8)
    ratio_a, ratio_b = 1.0, 3.0
    tables = [_table({a: int(ratio_a * a.operand_elems()), b: int(ratio_b * b.operand_elems())})]
    exact = cudnn_table.lookup(tables, "8.0", 91002, a)
    assert exact is not None and exact.exact and exact.low == a.operand_elems()
    between = _key("fwd", n=4)
    found = cudnn_table.lookup(tables, "8.0", 91002, between)
    assert found is not None and not found.exact
    assert (found.low, found.high) == (between.operand_elems(), 3 * between.operand_elems())
    other = cudnn_table.lookup(tables, "9.0", 91900, a)  # an unmeasured GPU: the nearest table, as a range
    assert other is not None and not other.exact and "sm80" in other.basis and other.low <= a.operand_elems()
    assert cudnn_table.lookup(tables, "8.0", 91002, _key("bwd_data")) is None  # no call of its family
    assert cudnn_table.lookup(tables, "8.0", 91002, _key("fwd", dtype="bfloat16")) is None


def test_nearest_table_prefers_the_architecture_then_the_cudnn_version() -> None:
    k = _key("fwd")
    tables = [_table({k: 1}, "9.0", 90100), _table({k: 2}, "8.0", 90100), _table({k: 3}, "8.0", 91002)]
    assert cudnn_table.nearest_table(tables, "8.0", 91100, k) is tables[2]
    assert cudnn_table.nearest_table(tables, "8.6", 90100, k) is tables[1]
    assert cudnn_table.nearest_table(tables, "9.0", 91900, k) is tables[0]


def _measured_cnn(big: int) -> list[Table]:
    """Every call of `_cnn` on 2x3x32x32 measured; the second convolution's forward takes `big` bytes."""
    first = ConvKey("fwd", "float32", "nchw", 2, 3, 32, 32, 16, 3, 3, (1, 1), (0, 0), (1, 1), 1)
    second = _key("fwd")
    entries = {first: 1000, second: big}
    for k in (first, second):
        for p in ("bwd_data", "bwd_filter"):
            entries[ConvKey(p, *list(k.__dict__.values())[1:])] = 4096
    return [_table(entries)]


def test_measured_workspaces_are_placed_and_reserved_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv, "_LOADED", [[]])
    before = simulate(_cnn, ["2x3x32x32"], device="cuda")
    monkeypatch.setattr(conv, "_LOADED", [_measured_cnn(64 * MIB)])
    after = simulate(_cnn, ["2x3x32x32"], device="cuda")
    assert before.cuda is not None and after.cuda is not None
    assert after.cuda.cudnn_workspace_estimate is None  # every call measured: nothing left beside the peak
    assert before.peak_bytes < 64 * MIB <= after.peak_bytes
    assert after.cuda.reserved_peak_bytes >= 64 * MIB > before.cuda.reserved_peak_bytes


def test_unmeasured_shapes_get_a_stated_range_not_placed(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _measured_cnn(64 * MIB)
    monkeypatch.setattr(conv, "_LOADED", [tables])
    res = simulate(
        _cnn, ["4x3x32x32"], device="cuda"
    )  # batch 4: no shape measured, the batch-2 ones bound it
    assert res.cuda is not None and res.cuda.cudnn_workspace_estimate is not None
    assert res.cuda.cudnn_workspace_estimate["high_bytes"] >= 64 * MIB
    assert res.peak_bytes < 64 * MIB


def test_benchmark_tables_are_not_used_for_the_default() -> None:
    k = _key("fwd")
    assert cudnn_table.lookup([Table("8.0", 91002, {k: 5}, benchmark=True)], "8.0", 91002, k) is None


def test_the_collection_script_enumerates_keys_the_table_reads() -> None:
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "gpu" / "collect_cudnn.py"
    spec = importlib.util.spec_from_file_location("collect_cudnn", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = mod.conv_shapes(_cnn, (3, 32, 32), 2, False)
    keys = [k for call in calls for k in mod.keys_of(call, "float32")]
    assert _key("bwd_data") in keys and len(keys) == 6
    assert all(ConvKey.parse(k.text()) == k for k in keys)
