//! Finding containers in the cgroup filesystem.
//!
//! - `layout`: which hierarchy to scan (v1, v2 or hybrid, from the mount
//!   table).
//! - `path`: which runtime and container a cgroup path belongs to.
//! - `scan`: walking the hierarchy for container cgroups, their PIDs and the
//!   directories to watch for new ones.
//! - `proc`: the container of one process, from `/proc/PID/cgroup`.

mod layout;
mod path;
mod proc;
mod scan;

pub use layout::{CgroupError, CgroupFs, CgroupLayout};
pub use path::{parse_cgroup_path, CgroupDriver, CgroupMatch};
pub use proc::{cgroup_of_pid, container_of, parse_proc_cgroup, CgroupLine, PidCgroup};
pub use scan::{ContainerCgroup, Scan, MAX_DEPTH};
