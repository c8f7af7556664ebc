//! Network namespaces and veth pairs for tests, removed on drop.
//!
//! Names are derived from a tag each test chooses, so parallel tests never
//! collide, and a leftover of an aborted earlier run with the same name is
//! removed before the namespace is made again. Addresses live only inside the
//! namespaces the tests create.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::{Command, Output},
};

/// Prefix of every namespace the test harness creates.
pub const NETNS_PREFIX: &str = "porin-t-";

/// A network namespace that is deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `porin-t-<tag>` (removing a leftover first) with its
    /// loopback up.
    pub fn create(tag: &str) -> Self {
        let name = format!("{NETNS_PREFIX}{tag}");
        // A leftover of an aborted run: delete it, ignore "does not exist".
        let _ = ip(&["netns", "del", &name]);
        ip_ok(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `cmd` inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .unwrap_or_else(|e| panic!("cannot run `ip netns exec {} {cmd:?}`: {e}", self.name))
    }

    /// Runs `cmd` inside the namespace; panics with its stderr unless it
    /// succeeds. Returns stdout.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "`ip netns exec {} {}` failed ({}): {}",
            self.name,
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace, so netlink and
    /// interface names inside `f` refer to it (e.g. attaching a program to
    /// one of its interfaces). The calling thread's namespace is unchanged.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a valid namespace fd affects only this
                // thread, which ends when `f` returns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns({path}) failed: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Whether a namespace called `name` exists.
    pub fn exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = ip(&["netns", "del", &self.name]);
        if !out.status.success() {
            // Not a panic: drop may run while unwinding from a failed test.
            eprintln!(
                "warning: could not delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Two namespaces, `a` and `b`, joined by a veth pair with IPv4 and IPv6
/// addresses on both ends: `10.231.<subnet>.1/24` and `fd00:231:<subnet>::1/64`
/// in `a`, `.2` / `::2` in `b`.
#[derive(Debug)]
pub struct NsPair {
    pub a: Netns,
    pub b: Netns,
    /// Interface name of the veth end in `a` (and in `b`).
    pub if_a: &'static str,
    pub if_b: &'static str,
    pub ip_a: Ipv4Addr,
    pub ip_b: Ipv4Addr,
    pub ip6_a: Ipv6Addr,
    pub ip6_b: Ipv6Addr,
}

impl NsPair {
    /// Creates `porin-t-<tag>-a` and `porin-t-<tag>-b`. `subnet` must be
    /// unique among tests that run at the same time.
    pub fn new(tag: &str, subnet: u8) -> Self {
        let a = Netns::create(&format!("{tag}-a"));
        let b = Netns::create(&format!("{tag}-b"));
        let (if_a, if_b) = ("veth-a", "veth-b");
        // Both ends are created directly inside their namespaces, so nothing
        // appears in (or can collide in) the root namespace.
        ip_ok(&[
            "link",
            "add",
            if_a,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            if_b,
            "netns",
            b.name(),
        ]);
        let ip_a = Ipv4Addr::new(10, 231, subnet, 1);
        let ip_b = Ipv4Addr::new(10, 231, subnet, 2);
        let ip6_a = Ipv6Addr::new(0xfd00, 0x231, subnet.into(), 0, 0, 0, 0, 1);
        let ip6_b = Ipv6Addr::new(0xfd00, 0x231, subnet.into(), 0, 0, 0, 0, 2);
        for (ns, ifname, v4, v6) in [(&a, if_a, ip_a, ip6_a), (&b, if_b, ip_b, ip6_b)] {
            ns.exec_ok(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            // nodad: the address is usable at once instead of after DAD.
            ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
            ns.exec_ok(&["ip", "link", "set", ifname, "up"]);
        }
        NsPair {
            a,
            b,
            if_a,
            if_b,
            ip_a,
            ip_b,
            ip6_a,
            ip6_b,
        }
    }
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")))
}

/// Runs `ip ARGS` in the caller's namespace; panics with its stderr unless
/// it succeeds.
pub fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
