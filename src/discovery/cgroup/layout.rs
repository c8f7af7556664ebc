//! Which cgroup hierarchy to scan: cgroup v1, v2 or hybrid, decided from the
//! mount table rather than guessed from directory names.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

/// How the cgroup filesystems under the cgroup root are mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Only v1 hierarchies (one per controller set, plus named ones).
    V1,
    /// One cgroup2 hierarchy and nothing else.
    V2,
    /// v1 controllers plus a cgroup2 hierarchy (systemd's `unified`).
    Hybrid,
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupLayout::V1 => "v1",
            CgroupLayout::V2 => "v2",
            CgroupLayout::Hybrid => "hybrid",
        })
    }
}

/// Why the cgroup filesystem could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup filesystem is mounted at or under {}", root.display())]
    NotMounted { root: PathBuf },
}

/// The one cgroup hierarchy discovery scans. Containers sit at the same
/// relative path in every hierarchy, so one is enough.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupFs {
    layout: CgroupLayout,
    dir: PathBuf,
    /// The mount's root inside its hierarchy, `""` for a whole-hierarchy
    /// mount; prefixed to relative paths so they read as in
    /// `/proc/PID/cgroup` even when only a subtree is mounted.
    mount_root: String,
}

/// The file the mount table is read from.
const MOUNTINFO: &str = "/proc/self/mountinfo";

impl CgroupFs {
    /// Finds the hierarchy to scan among the cgroup mounts at or under
    /// `cgroup_root` (normally `/sys/fs/cgroup`).
    pub fn detect(cgroup_root: &Path) -> Result<CgroupFs, CgroupError> {
        let text = fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Read {
            path: MOUNTINFO.into(),
            source,
        })?;
        CgroupFs::from_mountinfo(&text, cgroup_root)
    }

    /// [`CgroupFs::detect`] on a given mount table text.
    ///
    /// v2 and hybrid scan the cgroup2 mount. v1 scans the `name=systemd`
    /// hierarchy when mounted, else `pids`, else `memory`, else the first
    /// hierarchy in the table: systemd's and pids' track every process and
    /// are the cheapest to walk.
    pub fn from_mountinfo(mountinfo: &str, cgroup_root: &Path) -> Result<CgroupFs, CgroupError> {
        let mounts: Vec<Mount> = mountinfo
            .lines()
            .filter_map(Mount::parse)
            .filter(|m| m.point.starts_with(cgroup_root))
            .collect();
        let v2 = mounts.iter().find(|m| m.fstype == "cgroup2");
        let v1: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup").collect();

        let (layout, chosen) = match (v2, v1.is_empty()) {
            (Some(m), true) => (CgroupLayout::V2, m),
            (Some(m), false) => (CgroupLayout::Hybrid, m),
            (None, false) => {
                let has = |opt: &str| v1.iter().copied().find(|m| m.has_option(opt));
                let m = has("name=systemd")
                    .or_else(|| has("pids"))
                    .or_else(|| has("memory"))
                    .unwrap_or(v1[0]);
                (CgroupLayout::V1, m)
            }
            (None, true) => {
                return Err(CgroupError::NotMounted {
                    root: cgroup_root.to_owned(),
                })
            }
        };
        Ok(CgroupFs {
            layout,
            dir: chosen.point.clone(),
            mount_root: chosen.root.clone(),
        })
    }

    /// A hierarchy at a known directory, e.g. a fixture tree in tests.
    pub fn at(hierarchy_dir: PathBuf, layout: CgroupLayout) -> CgroupFs {
        CgroupFs {
            layout,
            dir: hierarchy_dir,
            mount_root: String::new(),
        }
    }

    pub fn layout(&self) -> CgroupLayout {
        self.layout
    }

    /// The hierarchy directory scanned, e.g. `/sys/fs/cgroup/unified`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Relative path (as in `/proc/PID/cgroup`) of the hierarchy directory
    /// itself: `""` for a whole-hierarchy mount.
    pub(crate) fn mount_root(&self) -> &str {
        &self.mount_root
    }
}

/// The parts of one mountinfo line that matter here.
struct Mount {
    /// Root of the mount within its filesystem, `""` for `/`.
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: String,
}

impl Mount {
    /// `ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`
    /// (proc(5)); the optional fields vary in number, hence the `-` search.
    fn parse(line: &str) -> Option<Mount> {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        if sep < 6 || fields.len() < sep + 4 {
            return None;
        }
        let root = unescape(fields[3]);
        // A mount root that is not a plain absolute path (e.g. outside the
        // reader's cgroup namespace) cannot prefix anything: treat as `/`.
        let root = if root.starts_with('/') && !root.split('/').any(|c| c == "..") {
            root.trim_end_matches('/').to_owned()
        } else {
            String::new()
        };
        Some(Mount {
            root,
            point: PathBuf::from(unescape(fields[4])),
            fstype: fields[sep + 1].to_owned(),
            super_options: fields[sep + 3].to_owned(),
        })
    }

    fn has_option(&self, opt: &str) -> bool {
        self.super_options.split(',').any(|o| o == opt)
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for `\`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/sys/fs/cgroup";

    /// This build machine's table (Debian 12 container host): v1 controllers,
    /// a `name=systemd` hierarchy and cgroup2 at `unified`.
    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
44 31 0:40 / /sys/fs/cgroup/hugetlb rw,relatime - cgroup cgroup rw,hugetlb
";

    /// A systemd host with the unified hierarchy only (optional fields too).
    const PURE_V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
26 23 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// Older v1-only host: controllers share hierarchies, systemd's named one
    /// present.
    const V1_SYSTEMD: &str = "\
24 20 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
29 24 0:25 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
";

    fn detect(table: &str) -> CgroupFs {
        CgroupFs::from_mountinfo(table, Path::new(ROOT)).expect("detect")
    }

    #[test]
    fn hybrid_scans_unified() {
        let fs = detect(HYBRID);
        assert_eq!(fs.layout(), CgroupLayout::Hybrid);
        assert_eq!(fs.dir(), Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(fs.mount_root(), "");
    }

    #[test]
    fn pure_v2_scans_root() {
        let fs = detect(PURE_V2);
        assert_eq!(fs.layout(), CgroupLayout::V2);
        assert_eq!(fs.dir(), Path::new(ROOT));
    }

    #[test]
    fn v1_prefers_systemd_then_pids_then_memory_then_first() {
        assert_eq!(
            detect(V1_SYSTEMD).dir(),
            Path::new("/sys/fs/cgroup/systemd")
        );

        let no_v2: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        let fs = detect(&no_v2);
        assert_eq!(fs.layout(), CgroupLayout::V1);
        assert_eq!(fs.dir(), Path::new("/sys/fs/cgroup/systemd"));

        let without = |table: &str, drop: &[&str]| -> String {
            table
                .lines()
                .filter(|l| !drop.iter().any(|d| l.ends_with(d)))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let t = without(&no_v2, &["name=systemd"]);
        assert_eq!(detect(&t).dir(), Path::new("/sys/fs/cgroup/pids"));
        let t = without(&no_v2, &["name=systemd", "pids"]);
        assert_eq!(detect(&t).dir(), Path::new("/sys/fs/cgroup/memory"));
        let t = without(&no_v2, &["name=systemd", "pids", "memory"]);
        assert_eq!(detect(&t).dir(), Path::new("/sys/fs/cgroup/cpu"));
    }

    #[test]
    fn mounts_elsewhere_are_ignored() {
        // A cgroup2 mount outside the configured root (e.g. a container's
        // view bind-mounted somewhere) is not the host's hierarchy.
        let table = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
50 22 0:23 / /sys/fs/cgroupx rw - cgroup2 cgroup2 rw
51 22 0:23 / /run/ctr/rootfs/sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        let err = CgroupFs::from_mountinfo(table, Path::new(ROOT)).unwrap_err();
        assert!(matches!(err, CgroupError::NotMounted { .. }), "{err}");
        assert!(err.to_string().contains(ROOT), "{err}");
    }

    #[test]
    fn subtree_mount_and_escapes() {
        let table = "26 23 0:23 /porin /var/lib/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        let fs = CgroupFs::from_mountinfo(table, Path::new("/var/lib")).unwrap();
        assert_eq!(fs.dir(), Path::new("/var/lib/my cgroup"));
        assert_eq!(fs.mount_root(), "/porin");
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let table = "garbage\n1 2 3\n26 23 0:23 / /sys/fs/cgroup rw - cgroup2\n";
        assert!(CgroupFs::from_mountinfo(table, Path::new(ROOT)).is_err());
    }
}
