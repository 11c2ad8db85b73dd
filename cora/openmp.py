"""OpenMP's spin policy, set before torch loads libgomp (which reads it once).

With libgomp's default (spin ~300k iterations at each barrier, then sleep) torch's threads crawl when another
process holds a core: on the shared 2-core development VM the cpu-quick CORA forward went from 1.0 s to
8.3 s, and encoding 100 class names from 1.9 s to 14.6 s. A short spin (10k) measured the same as the
default on a quiet machine (CORA 1.04 / 1.05 s) and 2.4 s under that load. OMP_WAIT_POLICY=PASSIVE (no spin)
is robust too but slowed many small ops 1.7x when quiet. A value the user sets (OMP_WAIT_POLICY or
GOMP_SPINCOUNT) always wins.
"""

from __future__ import annotations

import os
import sys

SHORT_SPIN = "10000"


def short_spin(who: str) -> str:
    """Sets GOMP_SPINCOUNT=SHORT_SPIN unless the user chose a policy or torch is already loaded; returns a
    description of the setting in effect (benchmarks record it). `who`: the caller, named in it."""
    if "torch" in sys.modules:
        return f"inherited (torch was imported before {who})"
    chosen = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ]
    if chosen:
        return ", ".join(chosen)
    os.environ["GOMP_SPINCOUNT"] = SHORT_SPIN
    return f"GOMP_SPINCOUNT={SHORT_SPIN} (set by {who})"
