"""Keep glibc's malloc from returning decoding's large temporaries to the system between forwards (CPU runs).

By default glibc serves an allocation above its mmap threshold (128 KiB at first, raised as such blocks are freed)
with a fresh mapping, and gives freed memory at the top of the heap back to the system past a trim threshold. On
CPU a forward's large temporaries (logits, attention over a long cache, the MLP's activations) are allocated and
freed at every step, so, depending on the process's allocation history, a run can page-fault fresh zeroed memory
at every forward: here an 8-row step at 870 tokens of context took 305-421 ms throughout a process's first batch
and 136-200 ms in later ones. Fixing both thresholds (the mmap one at glibc's ceiling, which also stops its
adaptation; freed memory kept for the next step up to TRIM_THRESHOLD) made that first batch 162-175 ms (measured
while attention still repeated the key/value heads, the largest of those temporaries: see attention.py). PyTorch's
CPU performance guides give the same advice (or jemalloc / tcmalloc via LD_PRELOAD, which this leaves alone).
Nothing changes elsewhere: another libc, or a run on an accelerator, whose CPU-side temporaries are small.
"""
from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20    # glibc's largest allowed value on 64-bit systems (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30     # free memory the heap keeps before returning any: above any step's temporaries

_applied: dict | None = None


def keep_freed_memory() -> dict | None:
    """Set glibc's mmap and trim thresholds for this process (once); returns what was set, or None where the C
    library is not glibc or refused them. Recorded in the run configuration."""
    global _applied
    if _applied is None:
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return None
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return None
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
            return None
        _applied = {"malloc": "glibc", "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
    return dict(_applied)


def applied() -> dict | None:
    """What `keep_freed_memory` set in this process (None: nothing)."""
    return dict(_applied) if _applied is not None else None
