"""``pyvirtiofsd-bench``: vhost-user-fs back-ends (ours, the C virtiofsd, the Rust virtiofsd,
any other command) side by side, driven by our front-end without a VM, in one table.

Modules: :mod:`.peers` (starting back-ends, one front-end session each), :mod:`.workloads`
(the rows, the fixture, running a row once), :mod:`.report` (aggregation and the table),
:mod:`.cli` (the command), :mod:`.guestbench` (the same comparison from inside QEMU guests).
BENCHMARKS.md at the top of the repository has the commands and the figures.
"""


def main(argv=None) -> int:
    """The ``pyvirtiofsd-bench`` console script (imports the benchmark only when run)."""
    from .cli import main as run

    return run(argv)


__all__ = ["main"]
