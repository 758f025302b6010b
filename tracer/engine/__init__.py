"""The engine: the request's step on the meta model under one recorder, every storage's allocation and free
recorded (loader, program, recorder, hooks, data-dependent values, distributed ranks, the device model)."""
