"""A process's own peak memory, importable without transformers (a child that measures itself stays small)."""
from __future__ import annotations

import resource


def peak_rss_bytes() -> int:
    """This process's own peak resident memory. Not getrusage's ru_maxrss: Linux carries that
    over from the parent across fork + exec, so a child never reports less than its parent."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: the best there is
