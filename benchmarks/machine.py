"""What a benchmark's times were measured on: cores, clock, vector width, fp32 peak.

``fp32_peak_gflops`` is the textbook peak: cores x fp32 FLOP per cycle x clock. FLOP per
cycle and core assumes two FMA units, each doing ``lanes`` fused multiply-adds (2 FLOP) per
cycle: 64 with AVX-512 (16 lanes), 32 with AVX2 + FMA (8 lanes), 8 with SSE only. The clock
is ``cpu MHz`` from ``/proc/cpuinfo`` (the current, not the turbo, frequency). Some CPUs
with AVX-512 have one FMA unit for 512-bit vectors, which halves their real peak: the peak
is an upper bound to read a measured GFLOP/s against, never a promise.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key and key not in info:
            info[key] = value.strip()
    return info


def machine_facts() -> dict:
    """Cores this process may use, CPU model, clock (GHz), vector ISA and fp32 peak (GFLOP/s)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if "avx512f" in flags:
        isa, flop_per_cycle = "AVX-512", 64
    elif "avx2" in flags and "fma" in flags:
        isa, flop_per_cycle = "AVX2+FMA", 32
    else:
        isa, flop_per_cycle = "SSE", 8
    try:
        ghz = float(info.get("cpu MHz", "0")) / 1000
    except ValueError:
        ghz = 0.0
    peak = cores * flop_per_cycle * ghz
    return {"cpu": info.get("model name", platform.processor() or "?"), "cores": cores, "ghz": round(ghz, 3),
            "isa": isa, "fp32_flop_per_cycle_per_core": flop_per_cycle, "fp32_peak_gflops": round(peak, 1)}


def describe(facts: dict | None = None) -> str:
    """One line: ``2 cores of Intel Xeon at 2.30 GHz, AVX-512, fp32 peak 294 GFLOP/s``."""
    f = facts or machine_facts()
    return (f"{f['cores']} cores of {f['cpu']} at {f['ghz']:.2f} GHz, {f['isa']}, "
            f"fp32 peak {f['fp32_peak_gflops']:.0f} GFLOP/s ({f['cores']} x {f['fp32_flop_per_cycle_per_core']} "
            f"FLOP/cycle x {f['ghz']:.2f} GHz)")


def forward_flops(model, example_inputs: tuple) -> int:
    """FLOP of one forward pass of ``model`` on ``example_inputs`` (torch.utils.flop_counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(*example_inputs)
    return int(counter.get_total_flops())
