"""--xattrmap: the rule parser and what the rules do to names in both directions."""
import errno

import pytest

from pyvirtiofsd.passthrough.xattrmap import Rule, XattrMap, XattrMapError, parse


def test_parse_rules_with_any_separator_and_white_space():
    rules = parse(" :prefix:client:trusted.:user.virtiofs.:\n  /ok/all/// ")
    assert rules == [Rule("prefix", "client", b"trusted.", b"user.virtiofs."),
                     Rule("ok", "all", b"", b"")]


@pytest.mark.parametrize("text,why", [
    ("", "no rules"),
    ("   ", "no rules"),
    (":prefix:client:trusted.:user.", "closing"),
    (":frob:all:::", "unknown rule type"),
    (":ok:everywhere:::", "unknown scope"),
    (":map::user.virtiofs.::ok:all:::", "last"),
    ("ok:all:::", "separator"),
])
def test_parse_errors_say_what_is_wrong(text, why):
    with pytest.raises(XattrMapError, match=why):
        parse(text)


def test_prefix_client_and_server():
    m = XattrMap(":prefix:all:trusted.:user.virtiofs.::ok:all:::")
    assert m.to_host(b"trusted.foo") == b"user.virtiofs.foo"
    assert m.to_guest(b"user.virtiofs.foo") == b"trusted.foo"
    assert m.to_host(b"user.plain") == b"user.plain"
    assert m.to_guest(b"security.selinux") == b"security.selinux"


def test_bad_and_unsupported():
    m = XattrMap(":bad:client:security.:: :unsupported:client:trusted.:: "
                 ":bad:server::security.: :ok:all:::")
    with pytest.raises(OSError) as ei:
        m.to_host(b"security.selinux")
    assert ei.value.errno == errno.EPERM
    with pytest.raises(OSError) as ei:
        m.to_host(b"trusted.x")
    assert ei.value.errno == errno.ENOTSUP
    assert m.to_guest(b"security.selinux") is None      # hidden from listxattr
    assert m.to_guest(b"user.a") == b"user.a"


def test_a_name_no_rule_matches_is_refused_from_the_guest_and_hidden_from_the_host():
    m = XattrMap(":ok:client:user.::")
    with pytest.raises(OSError) as ei:
        m.to_host(b"trusted.x")
    assert ei.value.errno == errno.EPERM
    assert m.to_guest(b"user.a") is None                 # no server-scope rule at all


def test_map_with_empty_key_prefixes_everything_and_hides_the_rest():
    m = XattrMap(":map::user.virtiofs.:")
    assert m.to_host(b"security.selinux") == b"user.virtiofs.security.selinux"
    assert m.to_host(b"user.x") == b"user.virtiofs.user.x"
    assert m.to_guest(b"user.virtiofs.trusted.t") == b"trusted.t"
    assert m.to_guest(b"user.hostonly") is None


def test_map_with_a_key_guards_the_mapped_names():
    m = XattrMap("/map/trusted./user.virtiofs./")
    assert m.to_host(b"trusted.a") == b"user.virtiofs.a"
    assert m.to_guest(b"user.virtiofs.a") == b"trusted.a"
    assert m.to_guest(b"trusted.hostlabel") is None      # the host's own trusted.* stay hidden
    with pytest.raises(OSError) as ei:                   # no way around the map from the guest
        m.to_host(b"user.virtiofs.a")
    assert ei.value.errno == errno.EPERM
    assert m.to_host(b"user.other") == b"user.other"
    assert m.to_guest(b"user.other") == b"user.other"


def test_first_matching_rule_wins():
    m = XattrMap(":ok:all:user.keep::"  ":prefix:all:user.:user.g.:")
    assert m.to_host(b"user.keep.x") == b"user.keep.x"
    assert m.to_host(b"user.other") == b"user.g.other"
