//! Walking one cgroup hierarchy for container cgroups and their processes.
//!
//! Containers come and go while the walk runs, so a directory that vanishes
//! (ENOENT, or ENODEV from a removed cgroup's files) is not an error: that
//! cgroup is simply left out of the result.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{layout::CgroupFs, path::match_path, CgroupMatch};

/// One container's cgroup as found by a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    pub m: CgroupMatch,
    /// Path relative to the hierarchy root, as in `/proc/PID/cgroup`.
    pub path: String,
    /// The cgroup's directory.
    pub dir: PathBuf,
    /// Processes in the cgroup and its sub-cgroups, sorted, no duplicates.
    /// Empty while a container is starting or stopping.
    pub pids: Vec<u32>,
}

/// The result of one walk of the hierarchy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Sorted by `path`.
    pub containers: Vec<ContainerCgroup>,
    /// Every non-container directory that was listed, the hierarchy root
    /// first, then sorted: where new container cgroups can appear, so where
    /// the watcher puts its inotify watches (IN_CREATE | IN_DELETE |
    /// IN_ONLYDIR).
    pub dirs: Vec<PathBuf>,
}

/// How deep below the hierarchy root the walk looks. The deepest shape known,
/// rootless Podman under `user@UID.service`, is 5 levels down.
pub const MAX_DEPTH: usize = 10;

impl CgroupFs {
    /// [`CgroupFs::scan_with`] refusing every containerd candidate: for
    /// callers with no containerd state to check against.
    pub fn scan(&self) -> io::Result<Scan> {
        self.scan_with(&|_, _| false)
    }

    /// Walks the hierarchy and returns the container cgroups in it and the
    /// directories walked.
    ///
    /// `confirm_containerd(namespace, id)` decides the ambiguous containerd
    /// shapes (`/<ns>/<id>`, `<ns>-<id>.scope`); it should say whether
    /// containerd has that task, e.g. whether
    /// `<state>/io.containerd.runtime.v2.task/<ns>/<id>` exists. A refused
    /// candidate is walked like any other directory.
    ///
    /// A container cgroup's sub-cgroups are not walked, only read for PIDs.
    /// Errors other than a vanished directory (e.g. EACCES) end the scan;
    /// the message names the path.
    pub fn scan_with(&self, confirm_containerd: &dyn Fn(&str, &str) -> bool) -> io::Result<Scan> {
        let mut scan = Scan::default();
        // Listing the root must work: a vanished hierarchy root is an error.
        let mut todo = vec![(self.dir().to_owned(), self.mount_root().to_owned(), 0)];
        let mut first = true;
        while let Some((dir, rel, depth)) = todo.pop() {
            let entries = match list_dirs(&dir) {
                Ok(entries) => entries,
                Err(e) if vanished(&e) && !first => continue,
                Err(e) => return Err(with_path(&dir, e)),
            };
            first = false;
            for name in entries {
                let child_dir = dir.join(&name);
                let child_rel = format!("{rel}/{name}");
                if let Some(m) = container_at(&child_rel, confirm_containerd) {
                    if let Some(pids) = read_pids(&child_dir)? {
                        scan.containers.push(ContainerCgroup {
                            m,
                            path: child_rel,
                            dir: child_dir,
                            pids,
                        });
                    }
                } else if depth + 1 < MAX_DEPTH {
                    todo.push((child_dir, child_rel, depth + 1));
                }
            }
            scan.dirs.push(dir);
        }
        scan.containers.sort_by(|a, b| a.path.cmp(&b.path));
        // The root is listed first; keep it there.
        scan.dirs[1..].sort();
        Ok(scan)
    }
}

/// The container whose cgroup is exactly `rel` (not a sub-cgroup of one:
/// the walk never reaches those), confirmed if it is a candidate.
fn container_at(rel: &str, confirm: &dyn Fn(&str, &str) -> bool) -> Option<CgroupMatch> {
    let (m, level) = match_path(rel)?;
    if level != rel.split('/').count() - 1 {
        return None;
    }
    if m.candidate && !confirm(m.namespace.as_deref().unwrap_or_default(), &m.id) {
        return None;
    }
    Some(m)
}

/// Names of the sub-directories of `dir`. Names that are not UTF-8 are left
/// out: no runtime creates them, and cgroup paths are matched as text.
fn list_dirs(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        // cgroupfs has no symlinks; not following any keeps the walk inside
        // the hierarchy whatever the directory holds.
        if entry.file_type()?.is_dir() {
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// PIDs in `dir`'s `cgroup.procs` and those of its sub-cgroups (Podman's
/// split `…/container` cgroup, or cgroups a container makes for itself).
/// `None` when `dir` itself vanished.
fn read_pids(dir: &Path) -> io::Result<Option<Vec<u32>>> {
    let mut pids = Vec::new();
    let mut todo = vec![(dir.to_owned(), 0)];
    while let Some((d, depth)) = todo.pop() {
        let is_top = depth == 0;
        let procs = d.join("cgroup.procs");
        match fs::read_to_string(&procs) {
            Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            Err(e) if vanished(&e) && is_top => return Ok(None),
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(with_path(&procs, e)),
        }
        if depth + 1 >= MAX_DEPTH {
            continue;
        }
        match list_dirs(&d) {
            Ok(names) => todo.extend(names.into_iter().map(|n| (d.join(n), depth + 1))),
            Err(e) if vanished(&e) => {}
            Err(e) => return Err(with_path(&d, e)),
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(Some(pids))
}

/// The cgroup went away under us: ENOENT for the directory, ENODEV for a
/// file of a cgroup removed after it was opened.
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{cgroup::CgroupDriver, cgroup::CgroupLayout, Runtime};

    const ID1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const ID2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const ID3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    /// A fixture hierarchy under the temp dir, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(test: &str) -> Tree {
            let root =
                std::env::temp_dir().join(format!("porin-cgroup-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            Tree(root)
        }

        /// Creates the cgroup `rel` with `procs` in its `cgroup.procs`.
        fn cgroup(&self, rel: &str, procs: &[u32]) -> &Tree {
            let dir = self.dir(rel);
            fs::create_dir_all(&dir).unwrap();
            let text: String = procs.iter().map(|p| format!("{p}\n")).collect();
            fs::write(dir.join("cgroup.procs"), text).unwrap();
            self
        }

        fn dir(&self, rel: &str) -> PathBuf {
            self.0.join(rel.trim_start_matches('/'))
        }

        fn fs(&self) -> CgroupFs {
            CgroupFs::at(self.0.clone(), CgroupLayout::V2)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn paths(scan: &Scan) -> Vec<&str> {
        scan.containers.iter().map(|c| c.path.as_str()).collect()
    }

    #[test]
    fn podman_cgroupfs_tree() {
        let t = Tree::new("podman-cgroupfs");
        t.cgroup("/", &[1])
            .cgroup("/system.slice/sshd.service", &[200])
            .cgroup("/libpod_parent", &[])
            .cgroup(&format!("/libpod_parent/libpod-{ID1}"), &[300, 301])
            // Podman's split layout: the container's processes one level down.
            .cgroup(&format!("/libpod_parent/libpod-{ID2}"), &[])
            .cgroup(
                &format!("/libpod_parent/libpod-{ID2}/container"),
                &[402, 401, 402],
            )
            .cgroup(&format!("/libpod_parent/libpod-conmon-{ID1}"), &[299]);
        let scan = t.fs().scan().unwrap();

        assert_eq!(
            paths(&scan),
            [
                format!("/libpod_parent/libpod-{ID1}"),
                format!("/libpod_parent/libpod-{ID2}")
            ]
        );
        let c1 = &scan.containers[0];
        assert_eq!(
            (c1.m.runtime, c1.m.id.as_str(), c1.m.driver),
            (Runtime::Podman, ID1, CgroupDriver::Cgroupfs)
        );
        assert_eq!(c1.pids, [300, 301]);
        assert_eq!(c1.dir, t.dir(&format!("libpod_parent/libpod-{ID1}")));
        assert_eq!(scan.containers[1].pids, [401, 402]);

        // Watched: every non-container directory, root first; nothing inside
        // a container.
        let mut want = vec![t.dir("/")];
        let mut rest = vec![
            t.dir("/system.slice"),
            t.dir("/system.slice/sshd.service"),
            t.dir("/libpod_parent"),
            t.dir(&format!("/libpod_parent/libpod-conmon-{ID1}")),
        ];
        rest.sort();
        want.extend(rest);
        assert_eq!(scan.dirs, want);
    }

    #[test]
    fn systemd_tree() {
        let t = Tree::new("systemd");
        let pod = format!("/machine.slice/machine-libpod_pod_{ID3}.slice");
        let rootless = "/user.slice/user-1000.slice/user@1000.service/user.slice";
        t.cgroup("/init.scope", &[1])
            .cgroup("/user.slice/user-1000.slice/session-1.scope", &[500])
            .cgroup(&format!("/machine.slice/libpod-{ID1}.scope"), &[600])
            .cgroup(&format!("/machine.slice/libpod-conmon-{ID1}.scope"), &[599])
            .cgroup(&format!("{pod}/libpod-{ID2}.scope"), &[700])
            .cgroup(&format!("{rootless}/libpod-{ID3}.scope"), &[800])
            .cgroup(&format!("/system.slice/docker-{ID2}.scope"), &[900]);
        let scan = t.fs().scan().unwrap();

        let mut found: Vec<(Runtime, String, Vec<u32>)> = scan
            .containers
            .iter()
            .map(|c| {
                assert_eq!(c.m.driver, CgroupDriver::Systemd, "{}", c.path);
                (c.m.runtime, c.path.clone(), c.pids.clone())
            })
            .collect();
        found.sort();
        let mut want = vec![
            (
                Runtime::Podman,
                format!("/machine.slice/libpod-{ID1}.scope"),
                vec![600],
            ),
            (
                Runtime::Podman,
                format!("{pod}/libpod-{ID2}.scope"),
                vec![700],
            ),
            (
                Runtime::Podman,
                format!("{rootless}/libpod-{ID3}.scope"),
                vec![800],
            ),
            (
                Runtime::Docker,
                format!("/system.slice/docker-{ID2}.scope"),
                vec![900],
            ),
        ];
        want.sort();
        assert_eq!(found, want);
        // The pod slice is where its next container appears: watched.
        assert!(scan.dirs.contains(&t.dir(&pod)));
        assert!(scan.dirs.contains(&t.dir(rootless)));
    }

    #[test]
    fn containerd_candidates_are_confirmed_or_refused() {
        let t = Tree::new("containerd");
        t.cgroup("/default/c1", &[10])
            .cgroup("/default/c1/sub", &[11])
            .cgroup("/default/gone", &[12])
            .cgroup("/porin/web.1", &[20])
            .cgroup("/process_api/ad014827e7289117bba07a480ad81879", &[30])
            .cgroup(
                &format!("/process_api/ad014827e7289117bba07a480ad81879/libpod-{ID1}"),
                &[31],
            )
            .cgroup("/system.slice/porin-c9.scope", &[40]);
        let known = ["default/c1", "porin/web.1", "porin/c9"];
        let confirm = |ns: &str, id: &str| known.contains(&format!("{ns}/{id}").as_str());
        let scan = t.fs().scan_with(&confirm).unwrap();

        assert_eq!(
            paths(&scan),
            [
                "/default/c1",
                "/porin/web.1",
                &format!("/process_api/ad014827e7289117bba07a480ad81879/libpod-{ID1}"),
                "/system.slice/porin-c9.scope",
            ]
        );
        let c1 = &scan.containers[0];
        assert_eq!(c1.m.namespace.as_deref(), Some("default"));
        assert_eq!(c1.m.runtime, Runtime::Containerd);
        assert_eq!(c1.pids, [10, 11], "sub-cgroup PIDs belong to the container");
        assert_eq!(scan.containers[3].m.driver, CgroupDriver::Systemd);
        // A refused candidate is an ordinary directory: walked and watched.
        assert!(scan.dirs.contains(&t.dir("/default/gone")));
        assert!(scan
            .dirs
            .contains(&t.dir("/process_api/ad014827e7289117bba07a480ad81879")));
        assert!(!scan.dirs.contains(&t.dir("/default/c1")));

        // Without a containerd state to ask, no candidate is a container.
        let plain = t.fs().scan().unwrap();
        assert_eq!(plain.containers.len(), 1);
        assert_eq!(plain.containers[0].m.runtime, Runtime::Podman);
    }

    #[test]
    fn vanished_cgroups_drop_out() {
        let t = Tree::new("vanished");
        t.cgroup(&format!("/libpod_parent/libpod-{ID1}"), &[1])
            .cgroup(&format!("/libpod_parent/libpod-{ID2}"), &[2])
            .cgroup(&format!("/libpod_parent/libpod-{ID2}/container"), &[3]);
        // A container whose cgroup went away between listing and reading: its
        // directory lists but its cgroup.procs is gone.
        fs::remove_file(t.dir(&format!("/libpod_parent/libpod-{ID1}/cgroup.procs"))).unwrap();
        // A sub-cgroup that went away the same way: the container stays.
        fs::remove_file(t.dir(&format!(
            "/libpod_parent/libpod-{ID2}/container/cgroup.procs"
        )))
        .unwrap();
        let scan = t.fs().scan().unwrap();
        assert_eq!(paths(&scan), [format!("/libpod_parent/libpod-{ID2}")]);
        assert_eq!(scan.containers[0].pids, [2]);

        // A removed directory after its parent was listed.
        let fs_ = t.fs();
        let gone = t.dir("/libpod_parent");
        fs::remove_dir_all(&gone).unwrap();
        assert_eq!(list_dirs(&gone).map_err(|e| vanished(&e)), Err(true));
        assert_eq!(read_pids(&gone).unwrap(), None);
        assert!(fs_.scan().unwrap().containers.is_empty());
    }

    #[test]
    fn missing_root_is_an_error_with_its_path() {
        let t = Tree::new("missing-root");
        let fs_ = CgroupFs::at(t.dir("/nope"), CgroupLayout::V1);
        let err = fs_.scan().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn depth_is_limited() {
        let t = Tree::new("depth");
        let deep: String = (0..MAX_DEPTH).map(|i| format!("/d{i}.slice")).collect();
        t.cgroup(&format!("{deep}/libpod-{ID1}"), &[1])
            .cgroup(&format!("/a/b/c/d/e/f/g/h/libpod-{ID2}"), &[2]);
        let scan = t.fs().scan().unwrap();
        assert_eq!(paths(&scan), [format!("/a/b/c/d/e/f/g/h/libpod-{ID2}")]);
    }

    #[test]
    fn symlinks_are_not_followed() {
        let t = Tree::new("symlink");
        t.cgroup("/real", &[]);
        let outside = Tree::new("symlink-outside");
        outside.cgroup(&format!("/libpod-{ID1}"), &[1]);
        std::os::unix::fs::symlink(&outside.0, t.dir("/link")).unwrap();
        let scan = t.fs().scan().unwrap();
        assert!(scan.containers.is_empty());
        assert!(!scan.dirs.contains(&t.dir("/link")));
    }
}
