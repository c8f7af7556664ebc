//! A stand-in for "the internet" in end-to-end tests: a network namespace
//! plugged into Podman's bridge with an address of Podman's network that no
//! container has, running a busybox HTTP server. To Porin it is a peer that
//! is neither an endpoint nor the host: `world`. The bridge and subnet are
//! Podman's own answer (`cni-podman0` with CNI, `podman0` with netavark).
//!
//! Only Podman's own bridge network (10.88.0.0/16 by default) and the test's
//! namespace are used; nothing is routed anywhere else.

use std::{
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    netns::{ip_ok, Netns},
    podman::PodmanNetwork,
};

/// A namespace on Podman's bridge serving HTTP on `port`.
pub struct WorldHost {
    pub netns: Netns,
    pub ip: Ipv4Addr,
    pub port: u16,
    veth: String,
    server: Child,
}

impl WorldHost {
    /// `host_octet` picks the address `<subnet>.250.<host_octet>` (e.g.
    /// 10.88.250.x), far above what Podman's IPAM hands out in tests; unique
    /// per test. Start a container first: netavark makes its bridge only
    /// while a container is on it.
    pub fn start(tag: &str, host_octet: u8, port: u16) -> Self {
        assert!(
            tag.len() <= 10,
            "tag {tag:?} too long for an interface name"
        );
        let net = PodmanNetwork::default_network();
        assert!(
            net.prefix <= 16,
            "Podman's network {}/{} is too small for the world host's address",
            net.subnet,
            net.prefix
        );
        // Without the bridge, the address would follow the default route off
        // the machine: refuse rather than send traffic anywhere else.
        assert!(
            std::path::Path::new("/sys/class/net")
                .join(&net.bridge)
                .exists(),
            "Podman's bridge {} ({} backend) does not exist: start a Podman container first",
            net.bridge,
            net.backend
        );
        let netns = Netns::create(&format!("world-{tag}"));
        let veth = format!("pw-{tag}");
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        ip_ok(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ]);
        ip_ok(&["link", "set", &veth, "master", &net.bridge, "up"]);
        let ip = net.addr(250 << 8 | u32::from(host_octet));
        netns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{ip}/{}", net.prefix),
            "dev",
            "eth0",
        ]);
        netns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        let www = std::env::temp_dir().join(format!("porin-t-world-{tag}"));
        std::fs::create_dir_all(&www).expect("www dir");
        std::fs::write(www.join("index.html"), "hello from the world\n").expect("index");
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns.name(),
                "busybox",
                "httpd",
                "-f",
                "-p",
            ])
            .arg(port.to_string())
            .arg("-h")
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start busybox httpd in the world namespace");
        let host = WorldHost {
            netns,
            ip,
            port,
            veth,
            server,
        };
        host.wait_listening();
        host
    }

    /// The host-side end of the namespace's veth (a port of Podman's bridge).
    pub fn veth(&self) -> &str {
        &self.veth
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let url = format!("http://127.0.0.1:{}/", self.port);
        let mut last = String::new();
        while Instant::now() < deadline {
            // The `timeout` applet, not `wget -T`: busybox 1.35's crashes.
            let out = self.netns.exec(&[
                "busybox", "timeout", "1", "busybox", "wget", "-q", "-O", "-", &url,
            ]);
            if out.status.success() {
                return;
            }
            last = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("httpd in {} did not start: {last}", self.netns.name());
    }
}

impl Drop for WorldHost {
    fn drop(&mut self) {
        // SAFETY: killing the server this guard started, by PID.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGKILL) };
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}
