"""Measurement helpers shared by the benchmarks: FLOPs counted by torch, synchronised
timings after a warm-up, peak memory per measurement, and the device's own peak rate for
matrix products, measured rather than taken from a data sheet.

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts while the code runs:
matrix products, convolutions and attention, not element-wise work.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

_FUSED_ATTENTION = flop_registry[torch.ops.aten._scaled_dot_product_flash_attention]


def _cpu_attention_flops(*args: Any, **kwargs: Any) -> int:
    """torch's FLOP registry knows CUDA's fused attention kernels but not the CPU one, which
    does the same arithmetic; without this, attention counts nothing on a CPU."""
    return _FUSED_ATTENTION(*args, **kwargs)


_cpu_attention_flops._get_raw = True  # type: ignore[attr-defined]  # already shape-wrapped: don't wrap again
EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (tiny smoke models have tiny counts)."""
    return float(f"{value:.{digits}g}")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Most memory torch held allocated on ``device`` since the last reset; None on CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def peak_reserved_gib(device: torch.device) -> float | None:
    """Most memory torch's allocator held from the driver since the last reset (allocated plus
    cached blocks: what the process needed of the card); None on CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_reserved(device) / 2**30, 3)


def count_flops(run: Callable[[], Any]) -> float:
    """FLOPs torch counts while ``run`` executes (on real tensors or on the meta device)."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        run()
    return float(counter.get_total_flops())


def measure(run: Callable[[], Any], device: torch.device, repeats: int, flops: float | None = None) -> dict:
    """Time ``repeats`` runs of ``run`` after one warm-up run.

    The warm-up counts the FLOPs (FlopCounterMode) unless ``flops`` is given, which a
    ``torch.compile``-d model needs: its arithmetic is its eager twin's, and counting would
    trace through the compiled code. Its seconds are returned as ``first_call_seconds``
    (compilation, kernel selection; with counting, the counter's overhead too). Peak memory
    covers the timed runs only.
    """
    synchronize(device)
    started = time.perf_counter()
    if flops is None:
        flops = count_flops(run)
    else:
        run()
    synchronize(device)
    first_call = time.perf_counter() - started
    reset_peak_memory(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    best = min(seconds)
    return {
        "seconds": round(best, 4),
        "seconds_all": [round(s, 4) for s in seconds],
        "first_call_seconds": round(first_call, 3),
        "tflop": significant(flops / 1e12),
        "achieved_tflops": significant(flops / best / 1e12),
        "peak_memory_gib": peak_memory_gib(device),
    }


def peak_matmul_tflops(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...],
                       seconds_per_size: float = 1.0) -> dict:
    """The device's matrix-product rate: square products of each size, back to back for about
    ``seconds_per_size``; the best size's rate is the peak the other figures are compared to."""
    rates = {}
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        flops = count_flops(lambda: torch.matmul(a, b, out=out))  # also the warm-up
        synchronize(device)
        started = time.perf_counter()
        torch.matmul(a, b, out=out)
        synchronize(device)
        iterations = max(3, int(seconds_per_size / max(time.perf_counter() - started, 1e-6)))
        started = time.perf_counter()
        for _ in range(iterations):
            torch.matmul(a, b, out=out)
        synchronize(device)
        rates[size] = flops * iterations / (time.perf_counter() - started) / 1e12
    best = max(rates, key=rates.get)
    return {"dtype": str(dtype).removeprefix("torch."), "tflops": round(rates[best], 1), "best_size": best,
            "tflops_by_size": {str(size): round(rate, 1) for size, rate in rates.items()}}
