//! `/proc/PID/cgroup`: which container a process belongs to, for events that
//! name a PID rather than a cgroup directory.

use std::{fs, io, path::Path};

use super::{path::match_path, CgroupMatch};

/// One line of `/proc/PID/cgroup`: `HIERARCHY:CONTROLLERS:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLine {
    /// 0 for the cgroup2 hierarchy.
    pub hierarchy: u32,
    /// v1 controllers and named hierarchies (`cpu`, `name=systemd`); empty
    /// for cgroup2.
    pub controllers: Vec<String>,
    /// Path relative to the hierarchy root.
    pub path: String,
}

/// The container a process is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidCgroup {
    /// Still a candidate when containerd's state has not confirmed it.
    pub m: CgroupMatch,
    /// The container's own cgroup, without any sub-cgroup the process sits
    /// in (`/libpod_parent/libpod-<id>`, not `…/container`).
    pub path: String,
}

/// Parses the text of `/proc/PID/cgroup`. Malformed lines are skipped.
pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|line| {
            // The path is last and may itself contain `:`.
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            // cgroup2 marks a removed cgroup this way; the path still says
            // whose it was.
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            Some(CgroupLine {
                hierarchy,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// The container among a process's cgroup lines, if any.
///
/// A fixed-marker match on any line wins over a candidate (a v1 controller
/// can hold a host process in a two-level cgroup such as
/// `/process_api/<hex>`); otherwise lines are tried cgroup2 first, then
/// `name=systemd`, then in file order.
pub fn container_of(lines: &[CgroupLine]) -> Option<PidCgroup> {
    let rank = |l: &CgroupLine| match l.hierarchy {
        0 => 0,
        _ if l.controllers.iter().any(|c| c == "name=systemd") => 1,
        _ => 2,
    };
    let mut ordered: Vec<&CgroupLine> = lines.iter().collect();
    ordered.sort_by_key(|l| rank(l)); // stable: file order within a rank

    let found: Vec<(CgroupMatch, String)> = ordered
        .iter()
        .filter_map(|l| {
            let (m, level) = match_path(&l.path)?;
            let path: String = l
                .path
                .split('/')
                .take(level + 1)
                .collect::<Vec<_>>()
                .join("/");
            Some((m, path))
        })
        .collect();
    let best = found
        .iter()
        .find(|(m, _)| !m.candidate)
        .or_else(|| found.first())?;
    Some(PidCgroup {
        m: best.0.clone(),
        path: best.1.clone(),
    })
}

/// Reads `<proc_root>/<pid>/cgroup` and finds the process's container.
/// `Ok(None)` for a host process; ENOENT when the process is gone.
pub fn cgroup_of_pid(proc_root: &Path, pid: u32) -> io::Result<Option<PidCgroup>> {
    let file = proc_root.join(pid.to_string()).join("cgroup");
    let text = fs::read_to_string(&file)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
    Ok(container_of(&parse_proc_cgroup(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Runtime;
    use std::path::PathBuf;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// This machine's own process: hybrid, host everywhere except a
    /// two-level memory cgroup.
    const HOST_HYBRID: &str = "\
10:hugetlb:/
9:name=systemd:/
8:pids:/
4:memory:/process_api/ad014827e7289117bba07a480ad81879
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn parses_v1_and_v2_lines() {
        let lines = parse_proc_cgroup("12:cpu,cpuacct:/a\n0::/b (deleted)\nbad\nx:y:z\n3::\n");
        assert_eq!(
            lines,
            [
                CgroupLine {
                    hierarchy: 12,
                    controllers: vec!["cpu".into(), "cpuacct".into()],
                    path: "/a".into()
                },
                CgroupLine {
                    hierarchy: 0,
                    controllers: vec![],
                    path: "/b".into()
                },
                CgroupLine {
                    hierarchy: 3,
                    controllers: vec![],
                    path: "".into()
                },
            ]
        );
        // A colon inside the path stays in the path.
        let lines = parse_proc_cgroup("1:name=systemd:/kubepods.slice:cri-containerd:abc\n");
        assert_eq!(lines[0].path, "/kubepods.slice:cri-containerd:abc");
    }

    #[test]
    fn host_process_in_hybrid_is_only_a_candidate() {
        let found = container_of(&parse_proc_cgroup(HOST_HYBRID)).unwrap();
        assert!(found.m.candidate);
        assert_eq!(found.m.namespace.as_deref(), Some("process_api"));
        assert_eq!(container_of(&parse_proc_cgroup("0::/init.scope\n")), None);
    }

    #[test]
    fn podman_process_in_every_hierarchy() {
        let text = format!(
            "10:hugetlb:/libpod_parent/libpod-{ID}\n9:name=systemd:/libpod_parent/libpod-{ID}\n\
             4:memory:/process_api/ad014827e7289117bba07a480ad81879\n0::/libpod_parent/libpod-{ID}/container\n"
        );
        let found = container_of(&parse_proc_cgroup(&text)).unwrap();
        assert_eq!(found.m.runtime, Runtime::Podman);
        assert_eq!(found.m.id, ID);
        assert!(!found.m.candidate);
        assert_eq!(found.path, format!("/libpod_parent/libpod-{ID}"));
    }

    #[test]
    fn pure_v2_containerd_candidate_path_is_cut_back() {
        let found = container_of(&parse_proc_cgroup("0::/default/c1/init\n")).unwrap();
        assert_eq!(found.path, "/default/c1");
        assert!(found.m.candidate);
    }

    #[test]
    fn reads_from_a_proc_root() {
        let root: PathBuf =
            std::env::temp_dir().join(format!("porin-cgroup-{}-proc", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("42")).unwrap();
        fs::write(
            root.join("42/cgroup"),
            format!("0::/machine.slice/libpod-{ID}.scope\n"),
        )
        .unwrap();
        let found = cgroup_of_pid(&root, 42).unwrap().unwrap();
        assert_eq!(found.path, format!("/machine.slice/libpod-{ID}.scope"));
        let gone = cgroup_of_pid(&root, 43).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert!(gone.to_string().contains("43/cgroup"), "{gone}");
        fs::remove_dir_all(&root).unwrap();
        // The real thing: this test process is a host process or in a
        // container, but the file must parse.
        cgroup_of_pid(Path::new("/proc"), std::process::id()).unwrap();
    }
}
