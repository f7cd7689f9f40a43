"""The C allocator's settings for one xlcnn command (Linux with glibc; elsewhere nothing).

glibc returns freed memory at the top of the heap to the system once more than a threshold lies
free, and serves every block above another threshold with a fresh mmap.  Both thresholds start
at 128 KB and only creep up as blocks are freed, so a batch run, whose arrays of 1-30 MB are
allocated and freed class after class, keeps giving pages back and faulting them in again.  On
the virtual machines this project runs on a fresh page costs 0.2-2 ms per MB
(bench/bench_verify.py prints the figure of the day), more than the arithmetic on it.

keep_freed_memory() lets the process keep what it has freed for its next arrays: blocks up to
32 MB (glibc's largest setting) come from the heap, and the heap is trimmed only past 1 GB free.
Freed blocks are reused, so the peak barely moves (seed CIFAR-10 verify: 364-370 MB -> 392 MB);
what changes is that memory is not handed back until the command ends.  It is called by the
command line (xlcnn/cli.py) for the whole command, not by the library: a program that imports
xlcnn keeps its own settings.  A user who set MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or
GLIBC_TUNABLES keeps theirs.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # the largest glibc accepts on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory():
    """Set the thresholds above; True when they were set."""
    if not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        libc.gnu_get_libc_version  # glibc only: musl has no such settings
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
