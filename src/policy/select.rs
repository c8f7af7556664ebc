//! Which group an endpoint belongs to.
//!
//! A selector matches when every criterion it gives matches: each label
//! `key: value` is present with exactly that value (the endpoint may carry
//! more labels), the name and image globs match, the runtime is the one
//! named. An endpoint belongs to the **first** group in file order whose
//! selector matches: file order is what the user controls and reads, so it
//! is the rule that stays predictable. When more than one group matches, the
//! endpoint is reported as an [`Overlap`] so `porin status` can show it: an
//! overlap is usually a selector that is broader than meant. An endpoint no
//! group selects gets `identity::UNMANAGED`.
//!
//! Host-network containers share the host's namespace: they have no veth for
//! the programs to attach to and their addresses are the host's, so their
//! traffic can only be seen as the host's. They are listed apart
//! ([`Selection::host_network`]) instead of getting an endpoint entry.

use std::collections::BTreeMap;

use crate::config::{self, Group, Selector};
use crate::discovery::{endpoint::Endpoint, Runtime};

/// Whether every criterion of `sel` matches `ep`.
pub fn matches(sel: &Selector, ep: &Endpoint) -> bool {
    let labels = has_all(&sel.labels, &ep.labels);
    let annotations = has_all(&sel.annotations, &ep.annotations);
    let name = sel.name.as_ref().is_none_or(|g| g.matches(&ep.name));
    let image = sel.image.as_ref().is_none_or(|g| g.matches(&ep.image));
    let runtime = sel.runtime.is_none_or(|r| same_runtime(r, ep.key.runtime));
    labels && annotations && name && image && runtime
}

/// Whether `have` holds every key of `want` with the same value.
fn has_all(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// The configuration and discovery name runtimes with separate enums (each
/// module stays independent); they mean the same three runtimes.
fn same_runtime(configured: config::Runtime, discovered: Runtime) -> bool {
    matches!(
        (configured, discovered),
        (config::Runtime::Podman, Runtime::Podman)
            | (config::Runtime::Containerd, Runtime::Containerd)
            | (config::Runtime::Docker, Runtime::Docker)
    )
}

/// One endpoint and the group it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<'e> {
    pub endpoint: &'e Endpoint,
    /// Index into `Config::groups`; `None` = unmanaged.
    pub group: Option<usize>,
}

/// An endpoint that more than one group selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The endpoint, as `name (runtime:id)`.
    pub endpoint: String,
    /// Every group that selects it, in file order; the first one wins.
    pub groups: Vec<String>,
}

/// The result of matching every endpoint against every group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection<'e> {
    /// Endpoints with their own network namespace, sorted by key.
    pub enforceable: Vec<Choice<'e>>,
    /// Host-network endpoints: not enforceable, sorted by key.
    pub host_network: Vec<Choice<'e>>,
    /// Sorted like the endpoints.
    pub overlaps: Vec<Overlap>,
}

/// Assigns every endpoint to its group.
pub fn select<'e>(groups: &[Group], endpoints: &'e [Endpoint]) -> Selection<'e> {
    let mut sorted: Vec<&Endpoint> = endpoints.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Selection::default();
    for endpoint in sorted {
        let selecting: Vec<usize> = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| matches(&g.select, endpoint))
            .map(|(i, _)| i)
            .collect();
        if selecting.len() > 1 {
            out.overlaps.push(Overlap {
                endpoint: describe(endpoint),
                groups: selecting.iter().map(|&i| groups[i].name.clone()).collect(),
            });
        }
        let choice = Choice {
            endpoint,
            group: selecting.first().copied(),
        };
        if endpoint.host_network {
            out.host_network.push(choice);
        } else {
            out.enforceable.push(choice);
        }
    }
    out
}

/// `name (runtime:short-id)`, as warnings and `explain` show endpoints.
pub fn describe(ep: &Endpoint) -> String {
    format!("{} ({})", ep.name, ep.key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Config};
    use crate::policy::tests::{endpoint, EndpointSpec};

    const GROUPS: &str = "\
version: 1
groups:
  - name: sensor
    select:
      labels: {app: sensor}
      image: \"localhost/sensor*\"
      runtime: podman
  - name: web
    select:
      labels: {app: web}
      name: \"web-*\"
  - name: anything-web
    select:
      name: \"*web*\"
  - name: on-docker
    select:
      runtime: docker
";

    fn cfg() -> Config {
        parse(GROUPS, "test.yaml").unwrap()
    }

    #[test]
    fn annotations_select_by_exact_key_and_value() {
        let c = parse(
            "version: 1\ngroups:\n  - name: gw\n    select:\n      annotations: {io.example/role: gw}\n      labels: {app: x}\n",
            "test.yaml",
        )
        .unwrap();
        let sel = &c.groups[0].select;
        let mut ep = endpoint(EndpointSpec::new("a").label("app", "x"));
        assert!(!matches(sel, &ep), "no annotation");
        ep.annotations
            .insert("io.example/role".into(), "gateway".into());
        assert!(!matches(sel, &ep), "another value");
        ep.annotations.insert("io.example/role".into(), "gw".into());
        assert!(matches(sel, &ep));
        ep.labels.clear();
        assert!(!matches(sel, &ep), "labels still must match too");
    }

    #[test]
    fn every_criterion_must_match() {
        let cfg = cfg();
        let sensor = &cfg.groups[0].select;
        let web = &cfg.groups[1].select;
        // (what, endpoint, matches sensor, matches web)
        let table: Vec<(&str, EndpointSpec, bool, bool)> = vec![
            (
                "all sensor criteria",
                EndpointSpec::new("s1")
                    .image("localhost/sensor:1")
                    .label("app", "sensor"),
                true,
                false,
            ),
            (
                "extra labels are fine",
                EndpointSpec::new("s1")
                    .image("localhost/sensor")
                    .label("app", "sensor")
                    .label("tier", "edge"),
                true,
                false,
            ),
            (
                "label value differs",
                EndpointSpec::new("s1")
                    .image("localhost/sensor")
                    .label("app", "Sensor"),
                false,
                false,
            ),
            (
                "label missing",
                EndpointSpec::new("s1").image("localhost/sensor"),
                false,
                false,
            ),
            (
                "image glob misses",
                EndpointSpec::new("s1")
                    .image("docker.io/sensor")
                    .label("app", "sensor"),
                false,
                false,
            ),
            (
                "wrong runtime",
                EndpointSpec::new("s1")
                    .image("localhost/sensor")
                    .label("app", "sensor")
                    .runtime(Runtime::Containerd),
                false,
                false,
            ),
            (
                "web name and label",
                EndpointSpec::new("web-1").label("app", "web"),
                false,
                true,
            ),
            (
                "web label, name glob misses",
                EndpointSpec::new("api-1").label("app", "web"),
                false,
                false,
            ),
            (
                "web name, label misses",
                EndpointSpec::new("web-1").label("app", "db"),
                false,
                false,
            ),
        ];
        for (what, spec, want_sensor, want_web) in table {
            let ep = endpoint(spec);
            assert_eq!(matches(sensor, &ep), want_sensor, "sensor: {what}");
            assert_eq!(matches(web, &ep), want_web, "web: {what}");
        }
    }

    #[test]
    fn first_group_in_file_order_wins_and_overlaps_are_reported() {
        let cfg = cfg();
        // (endpoint, group chosen, overlapping groups)
        let table: Vec<(EndpointSpec, Option<&str>, Vec<&str>)> = vec![
            (
                EndpointSpec::new("web-1").label("app", "web"),
                Some("web"),
                vec!["web", "anything-web"],
            ),
            (EndpointSpec::new("my-web"), Some("anything-web"), vec![]),
            (
                EndpointSpec::new("webby").runtime(Runtime::Docker),
                Some("anything-web"),
                vec!["anything-web", "on-docker"],
            ),
            (EndpointSpec::new("db-1").label("app", "db"), None, vec![]),
        ];
        for (spec, want, overlap) in table {
            let eps = vec![endpoint(spec)];
            let sel = select(&cfg.groups, &eps);
            let got = sel.enforceable[0]
                .group
                .map(|i| cfg.groups[i].name.as_str());
            assert_eq!(got, want, "{}", eps[0].name);
            let got_overlap: Vec<&str> = sel
                .overlaps
                .iter()
                .flat_map(|o| o.groups.iter().map(String::as_str))
                .collect();
            assert_eq!(got_overlap, overlap, "{}", eps[0].name);
            if let Some(o) = sel.overlaps.first() {
                assert!(o.endpoint.starts_with(&eps[0].name), "{o:?}");
            }
        }
    }

    #[test]
    fn host_network_endpoints_are_listed_apart_in_key_order() {
        let cfg = cfg();
        let eps = vec![
            endpoint(EndpointSpec::new("web-2").id("b").label("app", "web")),
            endpoint(
                EndpointSpec::new("web-host")
                    .id("c")
                    .label("app", "web")
                    .host_network(),
            ),
            endpoint(EndpointSpec::new("web-1").id("a").label("app", "web")),
        ];
        let sel = select(&cfg.groups, &eps);
        let names = |v: &[Choice]| {
            v.iter()
                .map(|c| c.endpoint.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&sel.enforceable), ["web-1", "web-2"]);
        assert_eq!(names(&sel.host_network), ["web-host"]);
        // The host-network endpoint still reports the group it would be in.
        assert_eq!(sel.host_network[0].group, Some(1));
    }
}
