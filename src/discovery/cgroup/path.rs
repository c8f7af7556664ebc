//! Cgroup path → container: which runtime placed a cgroup where, and under
//! which id. Pure string work; the scanner and `/proc/PID/cgroup` reader both
//! go through [`parse_cgroup_path`].
//!
//! Shapes recognised (path relative to the hierarchy root):
//!
//! | runtime    | driver   | shape                                                  |
//! |------------|----------|--------------------------------------------------------|
//! | Podman     | cgroupfs | `…/libpod-<hex64>` (e.g. `/libpod_parent/libpod-<id>`) |
//! | Podman     | systemd  | `…/libpod-<hex64>.scope` (machine.slice, user slices, pod slices) |
//! | Docker     | cgroupfs | `/docker/<hex64>` (any depth, parent named `docker`)    |
//! | Docker     | systemd  | `…/docker-<hex64>.scope`                               |
//! | containerd | systemd  | `…/cri-containerd-<hex64>.scope` (CRI; namespace `k8s.io`) |
//! | containerd | systemd  | `…/nerdctl-<hex64>.scope` (nerdctl; namespace unknown)  |
//! | containerd | cgroupfs | `/<namespace>/<id>` — candidate                         |
//! | containerd | systemd  | `…<x>.slice/<namespace>-<id>.scope` — candidate         |
//!
//! A container's own sub-cgroups (podman's `…/libpod-<id>/container`) match
//! at the container's level: anything below the container component is
//! allowed.
//!
//! containerd does not name cgroups itself: its client puts a path in the OCI
//! spec. `ctr` and the containerd client default to `/<namespace>/<id>`
//! (cgroupfs). runc's systemd driver only accepts `slice:prefix:name` there
//! and turns it into `<slice path>/<prefix>-<name>.scope`; the CRI plugin
//! uses the prefix `cri-containerd`, nerdctl `system.slice:nerdctl:<id>`,
//! and plain `ctr --runc-systemd-cgroup` needs an explicit `--cgroup`, for
//! which Porin assumes the convention `system.slice:<namespace>:<id>`.
//! Both containerd shapes without a fixed marker are only *candidates*: the
//! caller confirms them against containerd's state directory.

use crate::discovery::Runtime;

/// How the runtime manages cgroups: by writing the cgroup filesystem itself,
/// or through systemd transient scope units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// A cgroup path recognised as (possibly) a container's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CgroupMatch {
    pub runtime: Runtime,
    /// Full container id as the runtime knows it (64 hex for Podman, Docker,
    /// CRI and nerdctl; any containerd id for the candidate shapes).
    pub id: String,
    /// containerd namespace, when the path says it. `None` for Podman and
    /// Docker, and for nerdctl (its namespace is not in the path: look the id
    /// up in every namespace).
    pub namespace: Option<String>,
    pub driver: CgroupDriver,
    /// True when the shape alone cannot tell a container from any other
    /// cgroup (`/<ns>/<id>`, `<ns>-<id>.scope`): only containerd's state can
    /// confirm it (see `CgroupFs::scan_with`).
    pub candidate: bool,
}

/// Recognises a container cgroup path such as `/libpod_parent/libpod-<id>`.
///
/// `path` is relative to the hierarchy root, as in `/proc/PID/cgroup`. A
/// fixed-marker match anywhere in the path wins over a candidate; among
/// those, the outermost component wins (a container nested in a container is
/// reported as the outer one). Returns `None` for host cgroups and for paths
/// with empty, `.` or `..` components.
pub fn parse_cgroup_path(path: &str) -> Option<CgroupMatch> {
    match_path(path).map(|(m, _)| m)
}

/// [`parse_cgroup_path`] plus how many path components lead to the
/// container's cgroup (so `…/libpod-<id>/container` can be cut back).
pub(crate) fn match_path(path: &str) -> Option<(CgroupMatch, usize)> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return None;
    }
    let comps: Vec<&str> = rest.split('/').collect();
    // Refuse anything that could walk out of the hierarchy or that no
    // kernel-produced path contains.
    if comps
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == ".." || c.contains('\0'))
    {
        return None;
    }

    for (i, comp) in comps.iter().enumerate() {
        let parent = if i == 0 { None } else { Some(comps[i - 1]) };
        if let Some(m) = fixed_marker(comp, parent) {
            return Some((m, i + 1));
        }
    }
    for (i, comp) in comps.iter().enumerate() {
        if i == 1 {
            if let Some(m) = cgroupfs_candidate(comps[0], comp) {
                return Some((m, 2));
            }
        }
        if i > 0 && comps[i - 1].ends_with(".slice") {
            if let Some(m) = systemd_candidate(comp) {
                return Some((m, i + 1));
            }
        }
    }
    None
}

/// Shapes with a runtime-specific marker and a 64-hex id: unambiguous.
fn fixed_marker(comp: &str, parent: Option<&str>) -> Option<CgroupMatch> {
    let certain = |runtime, id: &str, namespace: Option<&str>, driver| CgroupMatch {
        runtime,
        id: id.to_owned(),
        namespace: namespace.map(str::to_owned),
        driver,
        candidate: false,
    };
    if let Some(unit) = comp.strip_suffix(".scope") {
        // `libpod-conmon-<id>.scope` fails the hex check: it is the monitor.
        let scopes = [
            ("libpod-", Runtime::Podman, None),
            ("docker-", Runtime::Docker, None),
            // The CRI plugin always works in containerd's `k8s.io` namespace.
            ("cri-containerd-", Runtime::Containerd, Some("k8s.io")),
            ("nerdctl-", Runtime::Containerd, None),
        ];
        for (prefix, runtime, ns) in scopes {
            if let Some(id) = unit.strip_prefix(prefix).filter(|id| is_hex64(id)) {
                return Some(certain(runtime, id, ns, CgroupDriver::Systemd));
            }
        }
        return None;
    }
    if let Some(id) = comp.strip_prefix("libpod-").filter(|id| is_hex64(id)) {
        return Some(certain(Runtime::Podman, id, None, CgroupDriver::Cgroupfs));
    }
    if parent == Some("docker") && is_hex64(comp) {
        return Some(certain(Runtime::Docker, comp, None, CgroupDriver::Cgroupfs));
    }
    None
}

/// containerd's default `/<namespace>/<id>`: two plain names, which is also
/// what any two-level host cgroup looks like, hence a candidate.
fn cgroupfs_candidate(ns: &str, id: &str) -> Option<CgroupMatch> {
    // Podman's cgroupfs parent is a valid namespace name but never one.
    if ns == "libpod_parent" || is_systemd_unit(ns) || is_systemd_unit(id) {
        return None;
    }
    if !is_namespace(ns) || !is_containerd_id(id) {
        return None;
    }
    Some(candidate(ns, id, CgroupDriver::Cgroupfs))
}

/// `<namespace>-<id>.scope` under a slice, from
/// `ctr run --runc-systemd-cgroup --cgroup <slice>:<namespace>:<id>`.
///
/// Namespaces may contain `-` and ids too, so the split is ambiguous; Porin
/// splits at the first `-` and so supports only namespaces without one.
fn systemd_candidate(comp: &str) -> Option<CgroupMatch> {
    let unit = comp.strip_suffix(".scope")?;
    let (ns, id) = unit.split_once('-')?;
    // Prefixes systemd, logind and other runtimes use for their own scopes;
    // refusing them here saves the state-directory lookups.
    const NOT_CONTAINERD: [&str; 7] = [
        "session", "run", "libpod", "docker", "crio", "cri", "machine",
    ];
    if NOT_CONTAINERD.contains(&ns) || !is_namespace(ns) || !is_containerd_id(id) {
        return None;
    }
    Some(candidate(ns, id, CgroupDriver::Systemd))
}

fn candidate(ns: &str, id: &str, driver: CgroupDriver) -> CgroupMatch {
    CgroupMatch {
        runtime: Runtime::Containerd,
        id: id.to_owned(),
        namespace: Some(ns.to_owned()),
        driver,
        candidate: true,
    }
}

/// Podman, Docker, CRI and nerdctl ids: 64 lowercase hex digits, exactly.
pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// containerd's identifier rule for container ids:
/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,75}`. It also keeps `.`/`..` out.
fn is_containerd_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 76
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// containerd's namespace rule: alphanumeric runs joined by single `.`, `_`
/// or `-`, at most 76 bytes.
fn is_namespace(s: &str) -> bool {
    s.len() <= 76
        && s.split(['.', '_', '-'])
            .all(|run| !run.is_empty() && run.bytes().all(|c| c.is_ascii_alphanumeric()))
}

/// systemd unit names are never containerd namespaces or ids, and they are
/// what most two-level host cgroups are (`/system.slice/sshd.service`).
fn is_systemd_unit(s: &str) -> bool {
    const SUFFIXES: [&str; 5] = [".slice", ".service", ".scope", ".mount", ".socket"];
    SUFFIXES.iter().any(|suffix| s.ends_with(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c9a7e5b2d4c6a8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f";
    const POD: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    /// path, runtime, id, namespace, driver, candidate, container level.
    type Row<'a> = (
        String,
        Runtime,
        &'a str,
        Option<&'a str>,
        CgroupDriver,
        bool,
        usize,
    );

    fn expect(row: &Row) {
        let (path, runtime, id, ns, driver, candidate, level) = row;
        let (m, got_level) =
            match_path(path).unwrap_or_else(|| panic!("{path}: expected a match, got none"));
        let want = CgroupMatch {
            runtime: *runtime,
            id: (*id).to_owned(),
            namespace: ns.map(str::to_owned),
            driver: *driver,
            candidate: *candidate,
        };
        assert_eq!(m, want, "{path}");
        assert_eq!(got_level, *level, "{path}: container level");
    }

    #[test]
    fn container_shapes() {
        use CgroupDriver::{Cgroupfs as Fs, Systemd as Sd};
        use Runtime::{Containerd as Ctd, Docker, Podman};
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            // Podman, cgroupfs (this machine's default) and its split sub-cgroup.
            (format!("/libpod_parent/libpod-{ID}"), Podman, ID, None, Fs, false, 2),
            (format!("/libpod_parent/libpod-{ID}/container"), Podman, ID, None, Fs, false, 2),
            (format!("/libpod-{ID}"), Podman, ID, None, Fs, false, 1),
            (format!("/libpod_parent/{POD}/libpod-{ID}"), Podman, ID, None, Fs, false, 3),
            // Podman, systemd: root, rootless, pods, split sub-cgroup.
            (format!("/machine.slice/libpod-{ID}.scope"), Podman, ID, None, Sd, false, 2),
            (format!("/machine.slice/libpod-{ID}.scope/container"), Podman, ID, None, Sd, false, 2),
            (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                Podman, ID, None, Sd, false, 5),
            (format!("/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{ID}.scope"),
                Podman, ID, None, Sd, false, 5),
            (format!("/machine.slice/machine-libpod_pod_{POD}.slice/libpod-{ID}.scope"),
                Podman, ID, None, Sd, false, 3),
            // Docker.
            (format!("/docker/{ID}"), Docker, ID, None, Fs, false, 2),
            (format!("/system.slice/docker-{ID}.scope"), Docker, ID, None, Sd, false, 2),
            // containerd, fixed markers.
            (format!("/system.slice/cri-containerd-{ID}.scope"), Ctd, ID, Some("k8s.io"), Sd, false, 2),
            (format!("/system.slice/nerdctl-{ID}.scope"), Ctd, ID, None, Sd, false, 2),
            // containerd candidates: cgroupfs default, arbitrary ids.
            ("/default/c1".into(), Ctd, "c1", Some("default"), Fs, true, 2),
            ("/k8s.io/web_1.a-b".into(), Ctd, "web_1.a-b", Some("k8s.io"), Fs, true, 2),
            ("/porin-test/c1/sub".into(), Ctd, "c1", Some("porin-test"), Fs, true, 2),
            // This machine's memory hierarchy has `/process_api/<32 hex>`: a
            // candidate that containerd's state then refuses.
            ("/process_api/ad014827e7289117bba07a480ad81879".into(),
                Ctd, "ad014827e7289117bba07a480ad81879", Some("process_api"), Fs, true, 2),
            // containerd systemd candidate (`--cgroup system.slice:ns:id`).
            ("/system.slice/default-c1.scope".into(), Ctd, "c1", Some("default"), Sd, true, 2),
            ("/system.slice/default-my-ctr.scope".into(), Ctd, "my-ctr", Some("default"), Sd, true, 2),
            // A marker deeper down beats a candidate higher up (custom parent).
            (format!("/mygroup/sub/libpod-{ID}"), Podman, ID, None, Fs, false, 3),
        ];
        for row in &rows {
            expect(row);
        }
    }

    #[test]
    fn not_containers() {
        let upper = ID.to_uppercase();
        let short = &ID[..63];
        let long = format!("{ID}0");
        let rows: Vec<String> = vec![
            "".into(),
            "/".into(),
            "relative/libpod-x".into(),
            "/init.scope".into(),
            "/system.slice".into(),
            "/system.slice/sshd.service".into(),
            "/system.slice/containerd.service".into(),
            "/user.slice/user-1000.slice/session-1.scope".into(),
            "/user.slice/user-1000.slice/user@1000.service/init.scope".into(),
            "/system.slice/run-r0123456789abcdef.scope".into(),
            "/machine.slice/machine-qemu\\x2d1\\x2dvm.scope".into(),
            // The container's monitor, not the container.
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/libpod_parent/libpod-conmon-{ID}"),
            // Pod cgroups themselves.
            format!("/machine.slice/machine-libpod_pod_{POD}.slice"),
            format!("/libpod_parent/libpod_pod_{POD}"),
            format!("/libpod_parent/{POD}"),
            "/libpod_parent".into(),
            // Ids that are not 64 lowercase hex.
            format!("/libpod_parent/libpod-{short}"),
            format!("/libpod_parent/libpod-{long}"),
            format!("/libpod_parent/libpod-{upper}"),
            format!("/machine.slice/libpod-{upper}.scope"),
            format!("/system.slice/docker-{short}.scope"),
            // Docker's hex id only under `docker`.
            format!("/{ID}"),
            // Traversal and malformed paths.
            format!("/libpod_parent/../libpod-{ID}"),
            format!("/libpod_parent/./libpod-{ID}"),
            format!("/libpod_parent//libpod-{ID}"),
            format!("/libpod_parent/libpod-{ID}/"),
            "/default/..".into(),
            "/../c1".into(),
            // Invalid containerd ids and namespaces.
            "/default/-c1".into(),
            "/default/c 1".into(),
            format!("/default/{}", "a".repeat(77)),
            "/a..b/c1".into(),
            "/default/c1:x".into(),
            // Single-level host cgroups.
            "/process_api".into(),
        ];
        for path in rows {
            assert_eq!(parse_cgroup_path(&path), None, "{path:?}");
        }
    }

    #[test]
    fn id_rules() {
        assert!(is_hex64(ID));
        assert!(!is_hex64(&ID.to_uppercase()));
        assert!(is_containerd_id("a"));
        assert!(is_containerd_id(&"a".repeat(76)));
        assert!(!is_containerd_id(&"a".repeat(77)));
        assert!(!is_containerd_id(".."));
        assert!(!is_containerd_id("a/b"));
        assert!(is_namespace("k8s.io"));
        assert!(is_namespace("porin-test_1"));
        assert!(!is_namespace("a..b"));
        assert!(!is_namespace("-a"));
        assert!(!is_namespace(""));
    }
}
