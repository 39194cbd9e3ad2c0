"""--translate-uid/--translate-gid rules (virtiofsd's syntax) and their two directions."""
import errno

import pytest

from pyvirtiofsd.passthrough.idmap import IdMap, IdMapError


def test_unmapped_ids_are_themselves():
    m = IdMap([])
    assert not m and m.to_host(1234) == 1234 and m.to_guest(1234) == 1234


def test_map_is_both_directions():
    m = IdMap(["map:1000:101000:10"])
    assert m.to_host(1000) == 101000 and m.to_host(1009) == 101009 and m.to_host(1010) == 1010
    assert m.to_guest(101005) == 1005 and m.to_guest(100999) == 100999


def test_guest_and_host_are_one_direction_each():
    m = IdMap(["guest:0:5000:1", "host:6000:0:1"])
    assert m.to_host(0) == 5000 and m.to_guest(5000) == 5000
    assert m.to_guest(6000) == 0 and m.to_host(6000) == 6000


def test_squash():
    m = IdMap(["squash-guest:0:1000:4294967295", "squash-host:0:1000:65536"])
    assert m.to_host(0) == m.to_host(4242) == 1000
    assert m.to_guest(0) == m.to_guest(65535) == 1000 and m.to_guest(65536) == 65536


def test_forbid_guest():
    m = IdMap(["forbid-guest:0:1000", "map:1000:1000:1"])
    with pytest.raises(OSError) as ei:
        m.to_host(0)
    assert ei.value.errno == errno.EPERM
    assert m.to_host_lenient(5) == 5 and m.to_host(1000) == 1000


@pytest.mark.parametrize("rule,why", [
    ("frob:1:2:3", "unknown type"),
    ("map:1:2", "expected"),
    ("forbid-guest:1:2:3", "expected"),
    ("map:a:2:3", "decimal"),
    ("map:1:2:0", "at least 1"),
    ("map:4294967295:0:2", "past"),
    ("map:-1:0:1", "decimal|0\\.\\."),
])
def test_bad_rules(rule, why):
    with pytest.raises(IdMapError, match=why):
        IdMap([rule])


def test_overlapping_ranges_in_one_direction_are_refused():
    with pytest.raises(IdMapError, match="overlaps"):
        IdMap(["map:1000:1000:10", "guest:1005:0:1"])
    with pytest.raises(IdMapError, match="host-to-guest"):   # map fills both directions
        IdMap(["map:1000:1000:10", "host:1005:0:1"])


def test_other_direction_may_reuse_the_range():
    m = IdMap(["guest:1000:2000:10", "host:1000:3000:10"])
    assert m.to_host(1001) == 2001 and m.to_guest(1001) == 3001
