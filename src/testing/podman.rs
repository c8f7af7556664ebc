//! Real Podman containers for tests, removed on drop.
//!
//! Containers run the project's busybox image (`localhost/porin-bb:3`,
//! built locally from Debian's busybox-static: no registry is needed). Names
//! are `porin-t-<tag>`; a leftover of an aborted run with the same name is
//! removed before the container is started again.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Output},
    sync::OnceLock,
};

/// The image every test container runs.
pub const IMAGE: &str = "localhost/porin-bb:3";
/// Prefix of every container the harness starts.
pub const NAME_PREFIX: &str = "porin-t-";

/// Builds [`IMAGE`] if it is missing (once per test process), with
/// `.ci/harness-image`: the same recipe `.ci/setup`'s smoke check uses.
pub fn ensure_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/harness-image");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): {}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A running Podman container, force-removed on drop.
#[derive(Debug)]
pub struct PodmanContainer {
    pub name: String,
    pub id: String,
    removed: bool,
}

/// How to start a test container.
#[derive(Debug, Default, Clone)]
pub struct Spec<'a> {
    pub labels: &'a [(&'a str, &'a str)],
    /// Extra `podman run` arguments (e.g. `--network host`).
    pub args: &'a [&'a str],
    /// Command and arguments; default `sleep 3600`.
    pub cmd: &'a [&'a str],
}

impl PodmanContainer {
    /// Starts `porin-t-<tag>` detached.
    pub fn run(tag: &str, spec: &Spec<'_>) -> Self {
        ensure_image();
        let name = format!("{NAME_PREFIX}{tag}");
        let _ = podman(&["rm", "-f", "-t", "0", &name]);
        let mut args: Vec<String> = ["run", "-d", "--name", &name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // The build machines lack CAP_SYS_RESOURCE: podman's default rlimits
        // would fail in crun, so pass lowered ones.
        for ulimit in ["nofile=1000:1000", "nproc=1000:1000"] {
            args.extend(["--ulimit".to_string(), ulimit.to_string()]);
        }
        for (k, v) in spec.labels {
            args.extend(["--label".to_string(), format!("{k}={v}")]);
        }
        args.extend(spec.args.iter().map(|s| s.to_string()));
        args.push(IMAGE.to_string());
        let cmd: &[&str] = if spec.cmd.is_empty() {
            &["sleep", "3600"]
        } else {
            spec.cmd
        };
        args.extend(cmd.iter().map(|s| s.to_string()));
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = podman_ok(&arg_refs).trim().to_owned();
        assert_eq!(id.len(), 64, "podman run printed an unexpected id: {id:?}");
        PodmanContainer {
            name,
            id,
            removed: false,
        }
    }

    /// PID of the container's init process (from `podman inspect`).
    pub fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().expect("pid")
    }

    /// IPv4 address on podman's default network, if any.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
            .parse()
            .ok()
    }

    /// `podman inspect -f FORMAT`, trimmed.
    pub fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "-f", format, &self.name])
            .trim()
            .to_owned()
    }

    /// `wget` of `url` from inside the container, given `timeout_s` seconds:
    /// true when the body arrived. A denied connection times out (dropped
    /// packets), so keep the timeout short in tests that expect it. (The
    /// `timeout` applet, not `wget -T`: busybox 1.35's `wget -T` crashes.)
    pub fn http_get(&self, url: &str, timeout_s: u32) -> bool {
        let t = timeout_s.to_string();
        podman(&[
            "exec", &self.name, "timeout", &t, "wget", "-q", "-O", "-", url,
        ])
        .status
        .success()
    }

    /// Removes the container now (`podman rm -f`).
    pub fn remove(mut self) {
        podman_ok(&["rm", "-f", "-t", "0", &self.name]);
        self.removed = true;
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        if !self.removed {
            let out = podman(&["rm", "-f", "-t", "0", &self.name]);
            if !out.status.success() {
                eprintln!(
                    "warning: could not remove container {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// Runs `podman ARGS`.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman (install it: .ci/setup): {e}"))
}

/// Runs `podman ARGS`; panics with stderr unless it succeeds. Returns stdout.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "`podman {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Podman's default network (`podman`) as Podman reports it: the harness
/// never assumes a bridge name, since the CNI backend (Debian 12's Podman
/// without netavark) calls it `cni-podman0` and netavark `podman0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanNetwork {
    /// `cni` or `netavark` (`podman info`'s `NetworkBackend`).
    pub backend: String,
    /// The host-side bridge, e.g. `cni-podman0` or `podman0`.
    pub bridge: String,
    /// The IPv4 subnet's network address and prefix length.
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// The bridge's own address (the containers' gateway).
    pub gateway: Ipv4Addr,
}

impl PodmanNetwork {
    /// Asks Podman (`podman info`, `podman network inspect podman`), once
    /// per test process. With `PORIN_TEST_PODMAN_BACKEND` set (`.ci/test`
    /// sets it for each backend's pass), a different backend fails the test:
    /// a pass meant for netavark never quietly runs on CNI.
    pub fn default_network() -> &'static PodmanNetwork {
        static NET: OnceLock<PodmanNetwork> = OnceLock::new();
        NET.get_or_init(|| {
            let backend = podman_ok(&["info", "--format", "{{.Host.NetworkBackend}}"])
                .trim()
                .to_owned();
            if let Ok(want) = std::env::var("PORIN_TEST_PODMAN_BACKEND") {
                assert_eq!(
                    backend,
                    want,
                    "PORIN_TEST_PODMAN_BACKEND={want} but Podman uses {backend} \
                     (CONTAINERS_CONF={:?})",
                    std::env::var("CONTAINERS_CONF").ok()
                );
            }
            let json = podman_ok(&["network", "inspect", "podman"]);
            parse_network(&backend, &json)
                .unwrap_or_else(|e| panic!("`podman network inspect podman`: {e}: {json}"))
        })
    }

    /// The address `offset` (host order) inside the subnet.
    pub fn addr(&self, offset: u32) -> Ipv4Addr {
        let host_bits = 32 - u32::from(self.prefix);
        assert!(
            host_bits == 32 || offset < (1u32 << host_bits),
            "offset {offset} outside {}/{}",
            self.subnet,
            self.prefix
        );
        Ipv4Addr::from(u32::from(self.subnet) | offset)
    }
}

/// Reads the bridge and the first IPv4 subnet out of `podman network
/// inspect`'s JSON (the same shape for both backends since Podman 4).
fn parse_network(backend: &str, json: &str) -> Result<PodmanNetwork, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let net = v.get(0).ok_or("no network in the answer")?;
    let bridge = net["network_interface"]
        .as_str()
        .ok_or("no network_interface")?
        .to_owned();
    let subnets = net["subnets"].as_array().ok_or("no subnets")?;
    for s in subnets {
        let Some((addr, prefix)) = s["subnet"].as_str().and_then(|c| c.split_once('/')) else {
            continue;
        };
        let (Ok(subnet), Ok(prefix)) = (addr.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
            continue; // an IPv6 subnet
        };
        let gateway = s["gateway"]
            .as_str()
            .ok_or("subnet without gateway")?
            .parse()
            .map_err(|e| format!("gateway: {e}"))?;
        return Ok(PodmanNetwork {
            backend: backend.to_owned(),
            bridge,
            subnet,
            prefix,
            gateway,
        });
    }
    Err("no IPv4 subnet".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_is_read_from_both_backends_inspect_output() {
        // Podman 4.3 with CNI (Debian 12 without netavark).
        let cni = r#"[{"name":"podman","id":"2f25","driver":"bridge",
            "network_interface":"cni-podman0","created":"2026-12-03T10:40:00Z",
            "subnets":[{"subnet":"10.88.0.0/16","gateway":"10.88.0.1"}],
            "ipv6_enabled":false,"internal":false,"dns_enabled":false,
            "ipam_options":{"driver":"host-local"}}]"#;
        let n = parse_network("cni", cni).unwrap();
        assert_eq!(n.bridge, "cni-podman0");
        assert_eq!((n.subnet, n.prefix), (Ipv4Addr::new(10, 88, 0, 0), 16));
        assert_eq!(n.gateway, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(n.addr(250 << 8 | 7), Ipv4Addr::new(10, 88, 250, 7));
        // netavark, dual stack, IPv6 first.
        let nv = r#"[{"name":"podman","network_interface":"podman0",
            "subnets":[{"subnet":"fd00::/64","gateway":"fd00::1"},
                       {"subnet":"10.89.0.0/24","gateway":"10.89.0.1"}]}]"#;
        let n = parse_network("netavark", nv).unwrap();
        assert_eq!(n.bridge, "podman0");
        assert_eq!((n.subnet, n.prefix), (Ipv4Addr::new(10, 89, 0, 0), 24));
        assert!(parse_network("cni", "[]").is_err());
        assert!(parse_network("cni", r#"[{"network_interface":"x","subnets":[]}]"#).is_err());
    }
}
