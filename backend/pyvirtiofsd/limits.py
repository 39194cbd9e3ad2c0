"""Resource limits: the open-file limit (virtiofsd's ``--rlimit-nofile``).

Every inode a guest has looked up holds an ``O_PATH`` fd, and every open file another one,
so a guest walking a large tree needs far more descriptors than the usual soft limit of
1024.  By default the limit is raised to min(1,000,000, /proc/sys/fs/nr_open), as virtiofsd
does.  Raising the hard limit needs CAP_SYS_RESOURCE; without it the default falls back to
the hard limit the daemon was given (an explicit ``--rlimit-nofile`` fails instead).
This runs before capabilities are dropped: CAP_SYS_RESOURCE is not kept.
"""
from __future__ import annotations

import resource

from pyvirtiofsd import logs

from .daemon import StartupError
log = logs.get_logger("pyvirtiofsd.limits")

DEFAULT_CAP = 1_000_000


class LimitError(StartupError):
    pass


def default_nofile() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            nr_open = int(f.read())
    except (OSError, ValueError):
        nr_open = DEFAULT_CAP
    return min(DEFAULT_CAP, nr_open)


def set_nofile(requested: int | None) -> int:
    """Apply ``--rlimit-nofile``: None = the default, 0 = leave the limit alone, N = set
    soft and hard limit to N.  Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if requested == 0:
        return soft
    target = default_nofile() if requested is None else requested
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
    except (ValueError, OSError) as e:  # ValueError: EPERM raising the hard limit
        if requested is not None:
            raise LimitError(f"cannot set the open-file limit to {target}: {e}") from None
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.warning("open-file limit not raised to the default; using the hard limit",
                    wanted=target, limit=hard, error=str(e))
        return max(soft, hard)
    log.debug("open-file limit", limit=target)
    return target
