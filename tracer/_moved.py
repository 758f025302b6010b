"""The module paths of memtrace 0.1's flat `tracer/`, kept for one release: importing one gives the module
at its new home, with a DeprecationWarning naming it (`memtrace.tracer.whatif` is
`memtrace.tracer.studies.whatif`). Installed by `tracer/__init__.py`; removed in the next release.

`memtrace.tracer.analysis` is now the analysis room's package; its functions are in `analysis.peaks`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

PREFIX = "memtrace.tracer."
MOVED: dict[str, str] = {
    "assume": "core.assume",
    "autocast": "meta.autocast",
    "batch": "engine.batch",
    "bench": "real.bench",
    "bench_run": "real.bench_run",
    "compare": "real.compare",
    "compat": "meta.compat",
    "compat_nn": "meta.compat_nn",
    "compat_torchvision": "meta.compat_torchvision",
    "data_dependent": "engine.data_dependent",
    "devices.cuda.presets": "core.presets",
    "diagnosis": "studies.diagnosis",
    "distributed": "engine.distributed",
    "errors": "core.errors",
    "export_snapshot": "outputs.export_snapshot",
    "export_trace": "outputs.export_trace",
    "extrapolate": "analysis.extrapolate",
    "fit": "studies.fit",
    "fxmap": "studies.fxmap",
    "gpu": "devices.gpu",
    "graph": "studies.graph",
    "hooks": "engine.hooks",
    "html_report": "outputs.html_report",
    "layers": "analysis.layers",
    "loader": "engine.loader",
    "losses": "engine.losses",
    "mapping": "studies.mapping",
    "measure": "real.measure",
    "metacopy": "meta.metacopy",
    "optim_meta": "meta.optim_meta",
    "palette": "outputs.palette",
    "parallel": "core.parallel",
    "plots": "outputs.plots",
    "prepare": "engine.prepare",
    "program": "engine.program",
    "recipes": "engine.recipes",
    "recorder": "engine.recorder",
    "records": "core.records",
    "repeat": "analysis.repeat",
    "report": "outputs.report",
    "routing": "meta.routing",
    "running": "real.running",
    "saved": "outputs.saved",
    "specs": "core.specs",
    "target_view": "meta.target_view",
    "timeline": "analysis.timeline",
    "user_frame": "meta.user_frame",
    "verify": "real.verify",
    "whatif": "studies.whatif",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module: ModuleType) -> None:
        return None


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths only; every other import goes on as usual."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        old = fullname.removeprefix(PREFIX)
        if not fullname.startswith(PREFIX) or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(PREFIX + MOVED[old]))


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
