use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

#[test]
fn prefixes_display_as_address_slash_length() {
    let v4 = IpPrefix {
        addr: Ipv4Addr::new(10, 232, 7, 2).into(),
        prefix_len: 24,
    };
    assert_eq!(v4.to_string(), "10.232.7.2/24");
    let v6 = IpPrefix {
        addr: Ipv6Addr::new(0xfd00, 0x232, 7, 0, 0, 0, 0, 2).into(),
        prefix_len: 64,
    };
    assert_eq!(v6.to_string(), "fd00:232:7::2/64");
}

#[test]
fn errors_name_the_pid_and_the_step() {
    let e = NetInfoError {
        pid: 4242,
        op: Operation::OpenNamespace,
        source: io::Error::from_raw_os_error(libc::ENOENT),
    };
    let text = e.to_string();
    assert!(text.contains("pid 4242"), "{text}");
    assert!(text.contains("open its network namespace"), "{text}");
    assert!(e.is_gone());
}

fn veth(link_netnsid: Option<i32>) -> LinkRecord {
    LinkRecord {
        index: 2,
        name: "eth0".into(),
        link: Some(17),
        link_netnsid,
        kind: Some("veth".into()),
        ..LinkRecord::default()
    }
}

#[test]
fn only_a_veth_whose_peer_is_in_the_host_namespace_is_followed() {
    assert!(is_veth_to(&veth(Some(0)), Some(0)));
    // Peer in a third namespace: IFLA_LINK is an index there, not on the host.
    assert!(!is_veth_to(&veth(Some(1)), Some(0)));
    // Both ends in the container: IFLA_LINK is a local index.
    assert!(!is_veth_to(&veth(None), Some(0)));
    assert!(!is_veth_to(&veth(None), None));
    let bridge_port = LinkRecord {
        kind: Some("macvlan".into()),
        ..veth(Some(0))
    };
    assert!(!is_veth_to(&bridge_port, Some(0)));
}
