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
fn errors_name_the_source_and_the_step() {
    let e = NetInfoError {
        netns: NetnsSource::Process(4242),
        op: Operation::OpenNamespace,
        source: io::Error::from_raw_os_error(libc::ENOENT),
    };
    let text = e.to_string();
    assert!(text.contains("pid 4242"), "{text}");
    assert!(text.contains("open its network namespace"), "{text}");
    assert!(e.is_gone());
    let e = NetInfoError {
        netns: NetnsSource::Path("/run/netns/netns-x".into()),
        op: Operation::EnterNamespace,
        source: io::Error::from_raw_os_error(libc::EINVAL),
    };
    let text = e.to_string();
    assert!(text.contains("netns file /run/netns/netns-x"), "{text}");
    assert!(!e.is_gone());
}

/// A process whose leader ended its own thread while another thread runs:
/// its namespace is found through the live thread.
#[test]
fn a_zombie_leaders_namespace_is_read_through_a_live_thread() {
    // A child process that starts a thread that sleeps, then ends its main
    // thread with SYS_exit (the thread only); fork keeps this test's
    // process intact (glibc keeps malloc usable in a forked child).
    // SAFETY: the child only starts a thread and ends its own.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        extern "C" fn sleeper(_: *mut libc::c_void) -> *mut libc::c_void {
            // SAFETY: plain sleeps; the parent kills this process.
            unsafe {
                libc::sleep(30);
                libc::_exit(0)
            }
        }
        // SAFETY: see above.
        unsafe {
            let mut t: libc::pthread_t = std::mem::zeroed();
            libc::pthread_create(&mut t, std::ptr::null(), sleeper, std::ptr::null_mut());
            libc::syscall(libc::SYS_exit, 0);
        }
        unreachable!();
    }
    let pid = pid as u32;
    let zombie = || {
        fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
    };
    let start = std::time::Instant::now();
    while !zombie() && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let direct = File::open(format!("/proc/{pid}/ns/net"));
    let through = open_netns(&NetnsSource::Process(pid)).map(|f| f.metadata().unwrap().ino());
    let ours = fs::metadata("/proc/self/ns/net").unwrap().ino();
    // SAFETY: killing and reaping the child forked above.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
        libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
    }
    assert!(direct.is_err(), "the zombie leader has no ns/net");
    assert_eq!(through.ok(), Some(ours), "found through its live thread");
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
