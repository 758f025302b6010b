"""Record the CPU allocator's events of single bf16 `aten.convolution_backward` calls on this machine.

Usage: python benchmarks/record_conv_bf16.py > tests/data/cpu-avx512-bf16/ops/conv_bf16_backward.json
Writes one JSON object: the machine (CPU flags, torch, oneDNN ISA) and, for each case below, its geometry,
output mask, thread count and every allocation and free (bytes, negative for a free) of the call, in
order. tests/test_rules_isa.py replays each case's rule with the ISA forced to the recorded machine's and
holds its events equal. The cases cover oneDNN's AVX-512-BF16 direct backward kernels and brgconv_strided
(backward data, strided): unit-stride 3x3, first layers (input and weight gradients), strided (even and
uneven widths, 8 to 256 input channels), 2x2/5x5/7x7, dilation, wide rows, the full-spatial harness (128
channels or more), 1x1 (the 1x1 kernel: data and weights; strided data on brgconv_strided), 1 to 16
threads; and 1x1 forward calls ("forward": the store workspace's rounding, strided copies)."""

import json

import torch
from recording_machine import machine
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

# n, c, h, w, out channels, kernel, stride, padding, dilation, bias, mask (input, weight, bias), threads
CASES = [
    (4, 16, 32, 32, 16, 3, 1, 1, 1, False, (1, 1, 0), 2),  # test_rules_cpu bf16-3x3
    (2, 3, 32, 32, 16, 3, 1, 1, 1, True, (0, 1, 1), 2),  # bf16-first-layer
    (2, 16, 32, 32, 32, 3, 2, 1, 1, True, (1, 1, 1), 2),  # bf16-strided
    (2, 32, 32, 32, 32, 3, 2, 1, 1, False, (1, 0, 0), 2),
    (2, 48, 32, 32, 64, 3, 2, 1, 1, False, (1, 0, 0), 2),
    (2, 64, 32, 32, 64, 3, 2, 1, 1, False, (1, 1, 0), 2),
    (2, 128, 16, 16, 128, 3, 2, 1, 1, False, (1, 0, 0), 2),
    (2, 16, 33, 33, 24, 3, 2, 1, 1, False, (1, 1, 0), 2),
    (2, 8, 32, 32, 16, 3, 2, 1, 1, False, (1, 0, 0), 2),
    (2, 16, 32, 32, 17, 3, 2, 1, 1, False, (1, 0, 0), 2),
    (1, 16, 32, 32, 17, 3, 2, 1, 1, False, (1, 0, 0), 2),  # rows split between the threads
    (1, 32, 16, 64, 32, 3, 2, 1, 1, False, (1, 0, 0), 4),
    (8, 64, 8, 20, 128, 3, 2, 1, 1, False, (1, 0, 0), 16),
    (1, 96, 28, 28, 32, 3, 3, 0, 1, False, (1, 1, 0), 1),  # uneven: rows of 30
    (6, 128, 32, 32, 16, 2, 3, 0, 1, False, (1, 0, 0), 2),
    (2, 96, 28, 28, 96, 3, 2, 1, 1, False, (1, 1, 0), 2),
    (2, 32, 112, 112, 64, 3, 2, 1, 1, False, (1, 0, 0), 2),
    (2, 3, 8, 225, 16, 3, 2, 1, 1, False, (1, 0, 0), 2),
    (6, 16, 16, 16, 32, 3, 2, 1, 1, False, (1, 0, 0), 3),
    (4, 16, 16, 16, 32, 3, 2, 1, 1, True, (1, 1, 1), 4),
    (2, 256, 16, 16, 256, 3, 2, 1, 1, False, (1, 0, 0), 2),
    (4, 64, 33, 12, 17, 3, 2, 1, 1, False, (1, 1, 0), 1),
    (2, 160, 28, 28, 64, 3, 2, 1, 1, False, (1, 1, 0), 1),
    (8, 256, 16, 40, 128, 2, 3, 1, 1, True, (1, 0, 0), 4),
    (2, 256, 7, 7, 32, 3, 1, 1, 1, True, (1, 1, 1), 2),  # full-spatial harness
    (2, 128, 16, 16, 64, 3, 1, 1, 1, False, (0, 1, 0), 3),
    (1, 96, 14, 9, 24, 3, 1, 1, 1, False, (0, 1, 0), 1),
    (8, 16, 28, 20, 24, 7, 2, 0, 1, True, (0, 1, 1), 1),
    (8, 256, 33, 33, 17, 7, 2, 3, 1, False, (0, 1, 0), 2),
    (1, 64, 33, 12, 64, 3, 1, 0, 2, True, (1, 1, 1), 2),  # dilated
    (1, 64, 32, 20, 64, 3, 1, 1, 2, True, (1, 1, 1), 4),
    (8, 48, 32, 40, 32, 7, 1, 0, 1, True, (1, 1, 1), 2),
    (4, 4, 33, 33, 256, 5, 1, 2, 1, False, (0, 1, 0), 2),  # first layers
    (3, 3, 32, 9, 48, 3, 3, 1, 1, True, (1, 0, 0), 3),
    (2, 8, 8, 8, 32, 3, 1, 1, 1, False, (1, 1, 0), 2),  # a first layer's input gradient, blocked
    (2, 3, 32, 20, 48, 3, 1, 1, 1, True, (1, 1, 1), 2),
    (1, 3, 8, 9, 17, 2, 1, 1, 1, False, (1, 0, 0), 1),
    (8, 128, 7, 20, 17, 2, 1, 1, 1, True, (1, 1, 1), 3),
    (4, 64, 16, 16, 64, 1, 1, 0, 1, False, (1, 1, 0), 2),  # 1x1 (test_rules_cpu bf16-1x1)
    (4, 64, 16, 16, 256, 1, 1, 0, 1, False, (1, 1, 0), 2),
    (4, 256, 16, 16, 64, 1, 1, 0, 1, True, (1, 1, 1), 2),
    (4, 64, 16, 16, 64, 1, 1, 0, 1, False, (1, 1, 0), 1),
    (4, 64, 16, 16, 64, 1, 1, 0, 1, False, (1, 1, 0), 4),
    (2, 24, 8, 8, 40, 1, 1, 0, 1, True, (1, 1, 1), 2),
    (8, 256, 14, 14, 64, 1, 1, 0, 1, False, (1, 1, 0), 2),  # rows of 14: no permw transposition
    (8, 64, 14, 14, 256, 1, 1, 0, 1, True, (1, 1, 1), 3),
    (4, 512, 7, 7, 128, 1, 1, 0, 1, False, (1, 1, 0), 2),
    (4, 128, 7, 7, 512, 1, 1, 0, 1, False, (1, 1, 0), 4),
    (3, 96, 28, 28, 160, 1, 1, 0, 1, False, (1, 1, 0), 3),
    (6, 160, 20, 20, 48, 1, 1, 0, 1, True, (1, 1, 1), 2),
    (2, 32, 56, 56, 128, 1, 1, 0, 1, False, (1, 1, 0), 2),
    (16, 256, 28, 28, 128, 1, 1, 0, 1, False, (0, 1, 0), 16),
    (4, 48, 30, 17, 96, 1, 1, 0, 1, False, (1, 1, 0), 4),
    (2, 16, 7, 9, 16, 1, 1, 0, 1, False, (1, 1, 0), 1),
    (4, 64, 16, 16, 128, 1, 2, 0, 1, False, (1, 1, 0), 2),  # 1x1 strided (test_rules_cpu bf16-1x1-strided)
    (8, 256, 28, 28, 512, 1, 2, 0, 1, False, (1, 1, 0), 2),
    (8, 512, 14, 14, 1024, 1, 2, 0, 1, True, (0, 1, 1), 4),
    (4, 64, 56, 56, 128, 1, 2, 0, 1, False, (1, 1, 0), 4),
    (2, 48, 30, 30, 32, 1, 2, 0, 1, True, (1, 1, 1), 1),
    (6, 128, 32, 32, 64, 1, 2, 0, 1, False, (0, 1, 0), 2),
    (1, 64, 16, 16, 192, 1, 1, 0, 1, False, (1, 1, 0), 2),  # 1x1, fewer images than threads: load groups
    (1, 512, 7, 7, 2048, 1, 1, 0, 1, False, (1, 0, 0), 2),
    (1, 2048, 7, 7, 512, 1, 1, 0, 1, False, (1, 0, 0), 4),
    (2, 64, 28, 28, 256, 1, 1, 0, 1, False, (1, 0, 0), 8),
    (2, 1024, 7, 7, 256, 1, 1, 0, 1, False, (1, 0, 0), 2),
    (1, 16, 4, 4, 16, 1, 1, 0, 1, False, (1, 0, 0), 4),  # tiny: fewer threads
    (3, 96, 8, 8, 40, 1, 1, 0, 1, False, (1, 0, 0), 5),
]

# 1x1 forward calls (n, c, h, w, out channels, stride, threads): the pixels rounded to the register
# blocking, and strided (reduce-to-unit-stride) copies
FORWARD = [
    (2, 64, 16, 16, 192, 1, 2),
    (2, 192, 14, 14, 160, 1, 2),
    (1, 32, 20, 20, 48, 1, 16),
    (4, 64, 16, 16, 128, 2, 2),
    (8, 256, 28, 28, 512, 2, 2),
    (4, 64, 30, 30, 48, 2, 3),
    (1, 64, 16, 16, 192, 1, 2),  # fewer images than threads: load groups
    (1, 256, 14, 14, 1024, 1, 2),
    (1, 2048, 7, 7, 512, 1, 2),
    (1, 512, 7, 7, 2048, 1, 4),
    (2, 64, 28, 28, 256, 1, 8),
    (1, 256, 56, 56, 128, 2, 3),
    (4, 1024, 7, 7, 256, 1, 2),
    (1, 16, 4, 4, 16, 1, 4),  # tiny: fewer threads
    (3, 40, 8, 8, 96, 1, 5),
    (2, 64, 15, 15, 128, 2, 2),  # strided, odd input: the direct kernel, no scratchpad
]


def events(fn):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    found = []

    def walk(nodes):
        for n in nodes:
            if n.tag == _EventType.Allocation:
                found.append((n.start_time_ns, n.extra_fields.alloc_size))
            walk(n.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    return [size for _, size in sorted(found)]


def record(case):
    n, c, h, w, o, k, s, p, d, bias, mask, threads = case
    torch.set_num_threads(threads)
    x = torch.randn(n, c, h, w, dtype=torch.bfloat16)
    wt = torch.randn(o, c, k, k, dtype=torch.bfloat16)
    geometry = ([s, s], [p, p], [d, d], False, [0, 0], 1)
    gy = torch.ones_like(torch.ops.aten.convolution(x, wt, None, *geometry))
    args = (gy, x, wt, [o] if bias else None, *geometry, [bool(m) for m in mask])
    torch.ops.aten.convolution_backward(*args)  # warm: oneDNN's primitive cache
    return {
        "input": [n, c, h, w],
        "out_channels": o,
        "kernel": k,
        "stride": s,
        "padding": p,
        "dilation": d,
        "bias": bias,
        "mask": list(mask),
        "threads": threads,
        "events": events(lambda: torch.ops.aten.convolution_backward(*args)),
    }


def record_forward(case):
    n, c, h, w, o, s, threads = case
    torch.set_num_threads(threads)
    x = torch.randn(n, c, h, w, dtype=torch.bfloat16)
    wt = torch.randn(o, c, 1, 1, dtype=torch.bfloat16)
    args = (x, wt, None, [s, s], [0, 0], [1, 1], False, [0, 0], 1)
    torch.ops.aten.convolution(*args)  # warm: oneDNN's primitive cache
    return {
        "input": [n, c, h, w],
        "out_channels": o,
        "stride": s,
        "threads": threads,
        "events": events(lambda: torch.ops.aten.convolution(*args)),
    }


print(
    json.dumps(
        {
            "machine": machine(),
            "cases": [record(c) for c in CASES],
            "forward": [record_forward(c) for c in FORWARD],
        },
        indent=1,
    )
)
