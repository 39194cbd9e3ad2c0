"""How many fuzz cases ran, per test: the figures the fuzz report gives (conftest.py writes
them out at the end of the session)."""
import collections

CASES: collections.Counter = collections.Counter()


def count_case(name: str) -> None:
    """Count one fuzz case run."""
    CASES[name] += 1
