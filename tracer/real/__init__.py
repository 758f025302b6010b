"""Real runs beside the simulation: measuring the step on the CPU allocator or a GPU, verify, compare with a
snapshot, the monitor's runs, and the bench gate."""
