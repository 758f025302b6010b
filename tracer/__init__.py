"""memtrace's engine: record a simulated step on the meta device, analyse it, report it.

Rooms, with imports flowing one way (tests/test_architecture.py holds it; docs/architecture.md draws it):
`core` (records and parsing, no torch) -> `meta` (PyTorch on meta) -> `devices` (the targets' rules) ->
`engine` (the step under the recorder) -> `analysis` (pure) -> `simulate.py` (the facade) -> `studies`
(what-if, fit, the map) and `real` (measured runs); `outputs` render a Result.
"""

from ._moved import install

install()
