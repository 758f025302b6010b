"""memtrace's engine: record a simulated step on the meta device, analyse it, report it."""
