//! Tests of the configuration reader: one test per kind of mistake, each
//! asserting the exact position and the field path, plus the shipped files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cidr::Cidr;
use super::http::{parse_header_name, parse_header_value, parse_host, HttpPath, Method};
use super::units::{check_port, parse_duration, parse_file_mode, parse_port_range, parse_size};
use super::*;

const FILE: &str = "test.yaml";

/// Every error as (line, column, message).
fn errors(source: &str) -> Vec<(u32, u32, String)> {
    match parse(source, FILE) {
        Ok(_) => panic!("expected errors, the configuration was accepted:\n{source}"),
        Err(errs) => errs
            .errors()
            .iter()
            .map(|e| (e.line, e.column, e.message.clone()))
            .collect(),
    }
}

/// Asserts exactly one error, at `line`:`column`, whose message starts with
/// `path: ` and contains `text`.
#[track_caller]
fn assert_one(source: &str, line: u32, column: u32, path: &str, text: &str) {
    let all = errors(source);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    let (l, c, message) = &all[0];
    assert_eq!((*l, *c), (line, column), "position of: {message}");
    assert!(
        message.starts_with(&format!("{path}: ")),
        "message `{message}` should start with `{path}: `"
    );
    assert!(
        message.contains(text),
        "message `{message}` should contain `{text}`"
    );
}

fn ok(source: &str) -> Config {
    match parse(source, FILE) {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

const GROUPS: &str = "\
version: 1
networks:
  - name: lan
    cidrs: [192.168.1.0/24]
groups:
  - name: sensor
    select: {labels: {app: sensor}}
  - name: web
    select: {labels: {app: web}}
";

// ---- kinds of mistakes ------------------------------------------------------

#[test]
fn unknown_field_suggests_the_closest_name() {
    assert_one(
        "version: 1\npolices: []\n",
        2,
        1,
        "polices",
        "unknown field `polices` (did you mean `policies`?)",
    );
    assert_one(
        "version: 1\nflows:\n  history: 100\n  colour: red\n",
        4,
        3,
        "flows.colour",
        "unknown field `colour`; expected one of: history, rate_limit, events_transport, log",
    );
}

#[test]
fn wrong_type() {
    assert_one(
        "version: 1\nflows:\n  history: many\n",
        3,
        12,
        "flows.history",
        "expected an integer, found a string",
    );
    assert_one(
        "version: 1\ngroups: {sensor: 1}\n",
        2,
        9,
        "groups",
        "expected a list, found a mapping",
    );
}

#[test]
fn integer_out_of_range() {
    assert_one(
        "version: 1\nflows:\n  history: 8\n",
        3,
        12,
        "flows.history",
        "8 is out of range 16-1000000",
    );
}

#[test]
fn duplicate_mapping_key() {
    assert_one(
        "version: 1\nlog:\n  level: info\n  level: debug\n",
        4,
        3,
        "log.level",
        "duplicate key `level` (first given at line 3, column 3)",
    );
}

#[test]
fn duplicate_group_name() {
    let src = format!("{GROUPS}  - name: web\n    select: {{name: \"web2\"}}\n");
    assert_one(
        &src,
        10,
        11,
        "groups[2].name",
        "duplicate group name `web` (first defined at groups[1].name, line 8)",
    );
}

#[test]
fn group_and_network_names_share_a_namespace() {
    let src = format!("{GROUPS}  - name: lan\n    select: {{name: \"lan*\"}}\n");
    assert_one(
        &src,
        10,
        11,
        "groups[2].name",
        "`lan` is already the name of a network",
    );
}

#[test]
fn reserved_name() {
    assert_one(
        "version: 1\nnetworks:\n  - name: world\n    cidrs: [10.0.0.0/8]\n",
        3,
        11,
        "networks[0].name",
        "`world` is a reserved name",
    );
    assert_one(
        "version: 1\ngroups:\n  - name: reserved:x\n    select: {name: x}\n",
        3,
        11,
        "groups[0].name",
        "names starting with `reserved:` are reserved",
    );
}

#[test]
fn invalid_name_syntax() {
    assert_one(
        "version: 1\ngroups:\n  - name: Sensor\n    select: {name: x}\n",
        3,
        11,
        "groups[0].name",
        "`Sensor` is not a valid name",
    );
}

#[test]
fn undefined_reference() {
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensr]\n    to: [web]\n    ports: [80]\n"
    );
    assert_one(
        &src,
        12,
        12,
        "policies[0].from[0]",
        "`sensr` is not a defined group or network (did you mean `sensor`?)",
    );
}

#[test]
fn deny_from_accepts_networks_only() {
    let src = format!("{GROUPS}uplinks:\n  - interface: eth0\n    deny_from: [lan, web]\n");
    assert_one(
        &src,
        12,
        22,
        "uplinks[0].deny_from[1]",
        "`web` is a group; deny_from accepts network names only",
    );
}

#[test]
fn cidr_with_host_bits_set() {
    assert_one(
        "version: 1\nnetworks:\n  - name: lan\n    cidrs: [192.168.1.1/24]\n",
        4,
        13,
        "networks[0].cidrs[0]",
        "192.168.1.1/24 has host bits set; the network is 192.168.1.0/24",
    );
}

#[test]
fn duplicate_cidr() {
    assert_one(
        "version: 1\nnetworks:\n  - name: lan\n    cidrs:\n      - 10.0.0.0/8\n      - \"10.0.0.0/8\"\n",
        6,
        9,
        "networks[0].cidrs[1]",
        "duplicate CIDR `10.0.0.0/8`",
    );
}

#[test]
fn port_out_of_range() {
    let src = format!(
        "{GROUPS}policies:\n  - {{name: a, from: [sensor], to: [web], ports: [80]}}\n  \
         - {{name: b, from: [sensor], to: [web], ports: [81]}}\n  \
         - name: c\n    from: [sensor]\n    to: [web]\n    ports: [70000]\n"
    );
    assert_one(
        &src,
        16,
        13,
        "policies[2].ports[0]",
        "port 70000 is out of range 1-65535",
    );
}

#[test]
fn reversed_and_overlapping_port_ranges() {
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         ports: [\"9100-9000\", 8000-8100, 8080, 8000-8100]\n"
    );
    let all = errors(&src);
    let expected = [
        (
            14,
            13,
            "policies[0].ports[0]: port range 9100-9000 is reversed; write 9000-9100",
        ),
        (
            14,
            37,
            "policies[0].ports[2]: 8080 overlaps 8000-8100 (policies[0].ports[1])",
        ),
        (
            14,
            43,
            "policies[0].ports[3]: 8000-8100 repeats 8000-8100 (policies[0].ports[1])",
        ),
    ];
    let got: Vec<(u32, u32, &str)> = all.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
    assert_eq!(got, expected);
}

#[test]
fn ports_not_allowed_with_icmp() {
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         protocol: icmp\n    ports: [1]\n"
    );
    assert_one(
        &src,
        15,
        12,
        "policies[0].ports",
        "ports are not allowed with protocol icmp",
    );
}

#[test]
fn http_needs_tcp_and_ports() {
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         protocol: udp\n    ports: [53]\n    http:\n      - {{method: GET, path: /}}\n"
    );
    assert_one(
        &src,
        17,
        7,
        "policies[0].http",
        "HTTP rules need `protocol: tcp`",
    );
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         http:\n      - {{method: GET, path: /}}\n"
    );
    assert_one(
        &src,
        15,
        7,
        "policies[0].http",
        "HTTP rules need explicit `ports`",
    );
}

#[test]
fn bad_http_method() {
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         ports: [80]\n    http:\n      - method: get\n        path: /\n"
    );
    assert_one(
        &src,
        16,
        17,
        "policies[0].http[0].method",
        "unknown HTTP method `get` (methods are case-sensitive: write `GET`)",
    );
}

#[test]
fn bad_http_path() {
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         ports: [80]\n    http:\n      - method: GET\n        path: /api/../admin\n      \
         - method: GET\n        path: /api/*/x\n      - method: GET\n        path: \"/a?b=c\"\n"
    );
    let all = errors(&src);
    let got: Vec<(u32, u32, &str)> = all.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
    assert_eq!(got.len(), 3, "{all:#?}");
    assert_eq!((got[0].0, got[0].1), (17, 15));
    assert!(got[0]
        .2
        .starts_with("policies[0].http[0].path: path `/api/../admin` contains a `..` segment"));
    assert_eq!((got[1].0, got[1].1), (19, 15));
    assert!(got[1]
        .2
        .starts_with("policies[0].http[1].path: path `/api/*/x` contains `*`"));
    assert_eq!((got[2].0, got[2].1), (21, 15));
    assert!(got[2]
        .2
        .starts_with("policies[0].http[2].path: path `/a?b=c` contains `?`"));
}

#[test]
fn bad_http_headers() {
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         ports: [80]\n    http:\n      - method: GET\n        path: /\n        headers:\n          \
         - name: \"X Key\"\n          - name: Accept\n            value: \"caf\u{e9}\"\n"
    );
    let all = errors(&src);
    let got: Vec<(u32, u32, &str)> = all.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
    assert_eq!(got.len(), 2, "{all:#?}");
    assert_eq!((got[0].0, got[0].1), (19, 19));
    assert!(got[0]
        .2
        .starts_with("policies[0].http[0].headers[0].name: header name `X Key` contains ` `"));
    assert_eq!((got[1].0, got[1].1), (21, 20));
    assert!(got[1]
        .2
        .starts_with("policies[0].http[0].headers[1].value: header value contains 'é'"));
}

#[test]
fn missing_required_field_names_parent_and_field() {
    let src = format!("{GROUPS}policies:\n  - name: p\n    from: [sensor]\n");
    assert_one(&src, 11, 5, "policies[0].to", "missing required field");
    assert_one(
        "log: {level: info}\n",
        1,
        1,
        "version",
        "missing required field",
    );
}

#[test]
fn empty_required_value() {
    let src = format!("{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to:\n");
    assert_one(&src, 13, 5, "policies[0].to", "a value is required");
}

#[test]
fn policy_needs_a_group_subject() {
    let src = format!("{GROUPS}policies:\n  - name: p\n    from: [lan]\n    to: [world]\n");
    assert_one(
        &src,
        11,
        5,
        "policies[0]",
        "policy names no group on `from` or `to`",
    );
}

#[test]
fn duplicate_policy_name_and_peer() {
    let src = format!(
        "{GROUPS}policies:\n  - {{name: p, from: [sensor, sensor], to: [web]}}\n  \
         - {{name: p, from: [web], to: [host]}}\n"
    );
    let all = errors(&src);
    let got: Vec<(u32, u32, &str)> = all.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
    assert_eq!(
        got,
        [
            (11, 30, "policies[0].from[1]: duplicate entry `sensor` (first at policies[0].from[0], line 11)"),
            (12, 5, "policies[1]: duplicate policy name `p` (first at policies[0], line 11)"),
        ]
    );
}

#[test]
fn invalid_enum_value() {
    assert_one(
        "version: 1\nenforcement:\n  mode: enforcing\n",
        3,
        9,
        "enforcement.mode",
        "unknown value `enforcing`; expected one of: enforce, audit",
    );
}

#[test]
fn bad_duration_and_size() {
    let all = errors(
        "version: 1\ndiscovery:\n  resync_interval: 2d\nflows:\n  log:\n    \
         path: /var/log/f.jsonl\n    max_size: 10MB\n",
    );
    let got: Vec<(u32, u32, &str)> = all.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
    assert_eq!(got.len(), 2, "{all:#?}");
    assert_eq!((got[0].0, got[0].1), (3, 20));
    assert!(got[0]
        .2
        .starts_with("discovery.resync_interval: `2d` is not a duration"));
    assert_eq!((got[1].0, got[1].1), (7, 15));
    assert!(got[1]
        .2
        .starts_with("flows.log.max_size: size `10MB` has unknown unit `MB`"));
    assert_one(
        "version: 1\ndiscovery:\n  resync_interval: 48h\n",
        3,
        20,
        "discovery.resync_interval",
        "duration 48h is out of range 1s-24h",
    );
}

#[test]
fn relative_path() {
    assert_one(
        "version: 1\nbpffs: sys/fs/bpf\n",
        2,
        8,
        "bpffs",
        "`sys/fs/bpf` must be an absolute path",
    );
}

#[test]
fn discovery_state_locations() {
    let c = ok("version: 1\n");
    assert_eq!(c.discovery.containerd, [ContainerdInstance::default()]);
    assert_eq!(
        c.discovery.containerd[0].root_dir,
        Path::new("/var/lib/containerd")
    );
    assert_eq!(
        c.discovery.podman_graphroots,
        [Path::new("/var/lib/containers/storage")]
    );

    // Each field of an instance falls back to containerd's default.
    let c = ok(
        "version: 1\ndiscovery:\n  containerd:\n    - root_dir: /data/containerd\n    \
         - state_dir: /run/k3s/containerd\n      root_dir: /var/lib/rancher/containerd\n  \
         podman_graphroots: [/srv/podman, /var/lib/containers/storage]\n",
    );
    let want = [
        ContainerdInstance {
            state_dir: "/run/containerd".into(),
            root_dir: "/data/containerd".into(),
        },
        ContainerdInstance {
            state_dir: "/run/k3s/containerd".into(),
            root_dir: "/var/lib/rancher/containerd".into(),
        },
    ];
    assert_eq!(c.discovery.containerd, want);
    assert_eq!(c.discovery.podman_graphroots.len(), 2);
    assert_eq!(c.discovery.docker_root, Path::new("/var/lib/docker"));
    let c = ok("version: 1\ndiscovery:\n  docker_root: /data/docker\n");
    assert_eq!(c.discovery.docker_root, Path::new("/data/docker"));
}

#[test]
fn discovery_state_location_mistakes() {
    assert_one(
        "version: 1\ndiscovery:\n  containerd:\n    - state_dir: run/containerd\n",
        4,
        18,
        "discovery.containerd[0].state_dir",
        "`run/containerd` must be an absolute path",
    );
    assert_one(
        "version: 1\ndiscovery:\n  containerd:\n    - state_dir: /run/c\n      \
         root_dir: var/lib/c\n",
        5,
        17,
        "discovery.containerd[0].root_dir",
        "`var/lib/c` must be an absolute path",
    );
    assert_one(
        "version: 1\ndiscovery:\n  docker_root: data/docker\n",
        3,
        16,
        "discovery.docker_root",
        "`data/docker` must be an absolute path",
    );
    assert_one(
        "version: 1\ndiscovery:\n  podman_graphroots: [/srv/a, srv/b]\n",
        3,
        31,
        "discovery.podman_graphroots[1]",
        "`srv/b` must be an absolute path",
    );
    assert_one(
        "version: 1\ndiscovery:\n  containerd:\n    - state_dir: /run/c\n      \
         socket: /run/c.sock\n",
        5,
        7,
        "discovery.containerd[0].socket",
        "unknown field `socket`; expected one of: state_dir, root_dir",
    );
    assert_one(
        "version: 1\ndiscovery:\n  containerd: []\n",
        3,
        15,
        "discovery.containerd",
        "drop containerd from discovery.runtimes",
    );
    // Two entries for one daemon (the second written, the first defaulted).
    assert_one(
        "version: 1\ndiscovery:\n  containerd:\n    - root_dir: /a\n    \
         - state_dir: /run/containerd\n",
        5,
        18,
        "discovery.containerd[1].state_dir",
        "duplicate containerd state_dir `/run/containerd` (first at discovery.containerd[0]",
    );
    assert_one(
        "version: 1\ndiscovery:\n  podman_graphroots: [/a, /a]\n",
        3,
        27,
        "discovery.podman_graphroots[1]",
        "duplicate graphroot `/a`",
    );
    // The old field is gone, and says what is expected instead.
    assert_one(
        "version: 1\ndiscovery:\n  containerd_state_dirs: [/run/containerd]\n",
        3,
        3,
        "discovery.containerd_state_dirs",
        "unknown field `containerd_state_dirs`",
    );
}

#[test]
fn bad_uplinks() {
    let all = errors(
        "version: 1\nuplinks:\n  - interface: averyveryverylongname\n  - interface: eth0\n  \
         - interface: eth0\n    xdp_mode: offload\n",
    );
    let got: Vec<(u32, u32, &str)> = all.iter().map(|(l, c, m)| (*l, *c, m.as_str())).collect();
    assert_eq!(got.len(), 3, "{all:#?}");
    assert_eq!((got[0].0, got[0].1), (3, 16));
    assert!(got[0].2.starts_with(
        "uplinks[0].interface: interface name `averyveryverylongname` must be 1-15 bytes"
    ));
    assert_eq!((got[1].0, got[1].1), (5, 5));
    assert!(got[1]
        .2
        .starts_with("uplinks[2].interface: duplicate uplink interface `eth0`"));
    assert_eq!((got[2].0, got[2].1), (6, 15));
    assert!(got[2]
        .2
        .starts_with("uplinks[2].xdp_mode: unknown value `offload`"));
}

#[test]
fn flood_needs_a_rate() {
    assert_one(
        "version: 1\nuplinks:\n  - interface: eth0\n    flood:\n      burst: 10\n",
        5,
        7,
        "uplinks[0].flood",
        "set syn_per_second and/or udp_per_second",
    );
    // A rate that is given but wrong is only reported for what it is.
    assert_one(
        "version: 1\nuplinks:\n  - interface: eth0\n    flood: {syn_per_second: 0}\n",
        4,
        29,
        "uplinks[0].flood.syn_per_second",
        "0 is out of range 1-10000000",
    );
}

#[test]
fn empty_selector() {
    assert_one(
        "version: 1\ngroups:\n  - name: g\n    select: {}\n",
        4,
        13,
        "groups[0].select",
        "needs at least one of labels, annotations, name, image, runtime",
    );
    assert_one(
        "version: 1\ngroups:\n  - name: g\n    select:\n      annotations: {\"\": x}\n",
        5,
        21,
        "groups[0].select.annotations[\"\"]",
        "key must not be empty",
    );
    assert_one(
        "version: 1\ngroups:\n  - name: g\n    select:\n      labels: {app: \"\"}\n",
        5,
        21,
        "groups[0].select.labels.app",
        "must not be empty",
    );
}

#[test]
fn annotations_select_like_labels() {
    let c = ok(
        "version: 1\ngroups:\n  - name: g\n    select:\n      annotations: {io.example/role: gw}\n",
    );
    assert_eq!(
        c.groups[0].select.annotations,
        std::collections::BTreeMap::from([("io.example/role".to_string(), "gw".to_string())])
    );
    assert!(c.groups[0].select.labels.is_empty());
}

#[test]
fn label_value_must_be_a_string() {
    assert_one(
        "version: 1\ngroups:\n  - name: g\n    select:\n      labels: {app.kubernetes.io/version: 1.10}\n",
        5,
        43,
        "groups[0].select.labels[\"app.kubernetes.io/version\"]",
        "expected a string, found a number (put it in quotes)",
    );
}

#[test]
fn control_mode() {
    // Unquoted 0600 stays the string "0600" (leading zeros are kept as
    // text), so only a plain integer needs quotes.
    assert_eq!(
        ok("version: 1\ncontrol:\n  mode: 0600\n").control.mode,
        0o600
    );
    assert_one(
        "version: 1\ncontrol:\n  mode: 600\n",
        3,
        9,
        "control.mode",
        "expected a string, found an integer (put it in quotes)",
    );
    assert_one(
        "version: 1\ncontrol:\n  mode: \"0666\"\n",
        3,
        9,
        "control.mode",
        "lets every local user write to the control socket",
    );
}

#[test]
fn metrics_listen_address() {
    assert_one(
        "version: 1\nmetrics:\n  listen: localhost:9962\n",
        3,
        11,
        "metrics.listen",
        "is not a socket address",
    );
}

#[test]
fn schema_version() {
    // Another version stops decoding: its fields would only add noise.
    assert_one(
        "version: 2\nwhatever: 1\n",
        1,
        10,
        "version",
        "unsupported schema version 2; this Porin reads version 1",
    );
}

#[test]
fn yaml_syntax_error_is_reported_once_with_its_position() {
    let all = errors("version: 1\npolicies: [\n  {name: a\nflows: {history: x}\n");
    assert_eq!(
        all,
        [(3, 3, "YAML syntax error: unclosed bracket '{'".to_owned())]
    );
    let all = errors("version: 1\nlog:\n  level: info\n bad: x\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!((all[0].0, all[0].1), (4, 2));
    // An unquoted `*` gets a hint, as `method: *` is easy to write.
    let all = errors("version: 1\npolicies:\n  - http:\n      - method: *\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!((all[0].0, all[0].1), (4, 17));
    assert!(all[0].2.contains("quote the value"), "{all:?}");
}

#[test]
fn empty_file_and_wrong_top_level() {
    let all = errors("# nothing\n");
    assert_eq!(all.len(), 1);
    assert!(all[0].2.contains("the file is empty"), "{all:?}");
    let all = errors("- version: 1\n");
    assert_eq!(
        all[0],
        (1, 1, "expected a mapping, found a list".to_owned())
    );
    let all = errors("version: 1\n---\nversion: 1\n");
    assert_eq!(all.len(), 1);
    assert!(all[0].2.contains("exactly one YAML document"), "{all:?}");
}

// ---- all errors at once -----------------------------------------------------

#[test]
fn one_file_with_many_mistakes_reports_all_of_them() {
    let src = "\
version: 1
enforcement:
  mode: enforcing
networks:
  - name: lan
    cidrs: [10.0.0.1/8, 10.1.0.0/16]
groups:
  - name: sensor
    select: {labels: {app: sensor}}
  - name: sensor
    select: {image: \"x*\"}
policies:
  - name: p
    from: [sensor]
    to: [wrold]
    ports: [0, 80]
    http:
      - method: GETT
        path: api
flows:
  histroy: 10
";
    let err = parse(src, "gw.yaml").unwrap_err();
    let rendered = err.to_string();
    let expected = "\
gw.yaml:3:9: enforcement.mode: unknown value `enforcing`; expected one of: enforce, audit
gw.yaml:6:13: networks[0].cidrs[0]: 10.0.0.1/8 has host bits set; the network is 10.0.0.0/8 (or write /32 for the single address)
gw.yaml:10:11: groups[1].name: duplicate group name `sensor` (first defined at groups[0].name, line 8)
gw.yaml:15:10: policies[0].to[0]: `wrold` is not a defined group or network (did you mean `world`?)
gw.yaml:16:13: policies[0].ports[0]: port 0 is out of range 1-65535
gw.yaml:18:17: policies[0].http[0].method: unknown HTTP method `GETT`; expected one of: *, GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT, TRACE
gw.yaml:19:15: policies[0].http[0].path: path `api` must start with `/`
gw.yaml:21:3: flows.histroy: unknown field `histroy` (did you mean `history`?)";
    assert_eq!(rendered, expected);
    assert_eq!(err.len(), 8);
    for e in &err {
        assert_eq!(e.file, "gw.yaml");
    }
}

// ---- shipped files ----------------------------------------------------------

#[test]
fn every_shipped_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = load(&path) {
                panic!("{}:\n{e}", path.display());
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected at least porin.yaml and iot-gateway.yaml"
    );
}

#[test]
fn default_config_is_audit_only_and_blocks_nothing() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/porin.yaml");
    let c = load(&path).unwrap();
    assert_eq!(c.enforcement.mode, Mode::Audit);
    assert_eq!(c.enforcement.unknown_workloads, UnknownWorkloads::Allow);
    assert!(c.uplinks.is_empty() && c.groups.is_empty() && c.policies.is_empty());
    // The values written in the file are the built-in defaults.
    assert_eq!(c, ok("version: 1\n"));
    assert_eq!(c.log_level(), log::LevelFilter::Info);
    assert_eq!(
        c.summary(),
        "audit mode, 0 groups, 0 networks, 0 policies, 0 uplinks"
    );
}

#[test]
fn iot_example_decodes_as_described() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/iot-gateway.yaml");
    let c = load(&path).unwrap();
    assert_eq!(c.enforcement.mode, Mode::Enforce);
    assert_eq!(c.uplinks[0].interface, "eth0");
    assert_eq!(c.uplinks[0].deny_from[0].kind, PeerKind::Network);
    let p = c
        .policies
        .iter()
        .find(|p| p.name == "sensor-to-web")
        .unwrap();
    assert_eq!(p.from[0].kind, PeerKind::Group);
    assert_eq!(p.http[0].method, Method::Post);
    assert_eq!(p.http[0].path, HttpPath::Exact("/api/v1/readings".into()));
    assert_eq!(p.http[0].headers[0].name, "content-type");
    let web = c.groups.iter().find(|g| g.name == "web").unwrap();
    assert_eq!(web.ground_rules.internet_egress, Verdict::Deny);
    let db = c.groups.iter().find(|g| g.name == "db").unwrap();
    assert_eq!(db.ground_rules.same_group, Verdict::Deny);
    assert_eq!(db.ground_rules.host_ingress, Verdict::Allow, "inherited");
    assert_eq!(c.control.mode, 0o660);
    assert_eq!(c.flows.log.as_ref().unwrap().max_size, 16 << 20);
}

#[test]
fn io_error_names_the_file() {
    let err = load(Path::new("/nonexistent/porin.yaml")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("/nonexistent/porin.yaml: cannot read the configuration:"),
        "{text}"
    );
}

#[test]
fn defaults_and_locations_of_named_items() {
    let c = ok(GROUPS);
    assert_eq!(c.discovery.resync_interval, Duration::from_secs(30));
    assert_eq!(c.control.mode, 0o600);
    assert_eq!(c.groups[1].name, "web");
    assert_eq!(c.groups[1].loc, Loc { line: 8, column: 5 });
    assert_eq!(c.networks[0].loc, Loc { line: 3, column: 5 });
    assert_eq!(c.groups[0].mode, Mode::Audit);
    assert_eq!(c.ground_rules, GroundRules::default());
}

// ---- small parsers -----------------------------------------------------------

#[test]
fn cidr_parsing() {
    let v4: Cidr = "192.168.1.0/24".parse().unwrap();
    assert_eq!(v4.to_string(), "192.168.1.0/24");
    assert!(v4.contains("192.168.1.77".parse().unwrap()));
    assert!(!v4.contains("192.168.2.1".parse().unwrap()));
    assert!(!v4.contains("::ffff:192.168.1.1".parse().unwrap()));
    let v6: Cidr = "fd00:1::/64".parse().unwrap();
    assert!(v6.contains("fd00:1::5".parse().unwrap()));
    assert!(!v6.contains("fd00:2::5".parse().unwrap()));
    let host: Cidr = "10.0.0.5".parse().unwrap();
    assert_eq!(host.prefix_len(), 32);
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(IpAddr::from([8, 8, 8, 8])));
    let all6: Cidr = "::/0".parse().unwrap();
    assert!(all6.contains("2001:db8::1".parse().unwrap()));

    let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
    assert!(err.contains("the network is 10.0.0.0/8"), "{err}");
    let err = "fd00:1::1/64".parse::<Cidr>().unwrap_err();
    assert!(err.contains("the network is fd00:1::/64"), "{err}");
    assert!("10.0.0.0/33"
        .parse::<Cidr>()
        .unwrap_err()
        .contains("out of range 0-32"));
    assert!("::/129"
        .parse::<Cidr>()
        .unwrap_err()
        .contains("out of range 0-128"));
    assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
    assert!("10.0.0.0/".parse::<Cidr>().is_err());
    assert!("10.0.0/8".parse::<Cidr>().is_err());
    assert!("lan".parse::<Cidr>().is_err());
}

#[test]
fn port_parsing() {
    assert_eq!(check_port(1), Ok(1));
    assert_eq!(check_port(65535), Ok(65535));
    assert!(check_port(0).is_err());
    assert_eq!(
        check_port(70000).unwrap_err(),
        "port 70000 is out of range 1-65535"
    );
    let r = parse_port_range("9000-9100").unwrap();
    assert_eq!((r.first, r.last), (9000, 9100));
    assert!(r.contains(9050) && !r.contains(9101));
    assert_eq!(parse_port_range("443").unwrap().to_string(), "443");
    assert!(parse_port_range("9100-9000")
        .unwrap_err()
        .contains("reversed"));
    assert!(parse_port_range("1-70000")
        .unwrap_err()
        .contains("70000 is out of range"));
    for bad in ["", "-", "80-", "-80", "a-b", "1-2-3", " 80", "+80"] {
        assert!(parse_port_range(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn duration_size_and_mode_parsing() {
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
    for bad in ["30", "s", "1.5s", "-1s", "1h30m", "30 s", "30ms"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_size("64KiB"), Ok(65536));
    assert_eq!(parse_size("16MiB"), Ok(16 << 20));
    assert_eq!(parse_size("4GiB"), Ok(4 << 30));
    assert_eq!(parse_size("100B"), Ok(100));
    for bad in ["16", "16MB", "16mib", "MiB", "1.5GiB"] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_file_mode("0600"), Ok(0o600));
    assert_eq!(parse_file_mode("660"), Ok(0o660));
    for bad in ["0800", "60", "04755", "0602", "rw"] {
        assert!(parse_file_mode(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn http_path_syntax() {
    assert_eq!(HttpPath::parse("/"), Ok(HttpPath::Exact("/".into())));
    assert_eq!(
        HttpPath::parse("/api/v1/readings"),
        Ok(HttpPath::Exact("/api/v1/readings".into()))
    );
    assert_eq!(
        HttpPath::parse("/api/*"),
        Ok(HttpPath::Prefix("/api".into()))
    );
    assert_eq!(HttpPath::parse("/*"), Ok(HttpPath::Prefix(String::new())));
    assert!(HttpPath::parse("/a%20b/c:d@e;f=g").is_ok());
    assert!(HttpPath::parse("/dir/").is_ok());
    for bad in [
        "", "api", "/api*", "/*/x", "/a/../b", "/a/./b", "/..", "/a//b", "/a?x=1", "/a#f", "/a b",
        "/%zz", "/%4", "/é", "/api//*",
    ] {
        assert!(HttpPath::parse(bad).is_err(), "{bad:?}");
    }
    assert!(HttpPath::parse(&format!("/{}", "a".repeat(127))).is_ok());
    assert!(HttpPath::parse(&format!("/{}", "a".repeat(128))).is_err());

    let prefix = HttpPath::parse("/api/*").unwrap();
    assert!(prefix.matches("/api") && prefix.matches("/api/") && prefix.matches("/api/v1"));
    assert!(!prefix.matches("/apix") && !prefix.matches("/ap"));
    let any = HttpPath::parse("/*").unwrap();
    assert!(any.matches("/") && any.matches("/x/y"));
    assert_eq!(prefix.to_string(), "/api/*");
}

#[test]
fn http_method_host_and_header_syntax() {
    assert_eq!(Method::parse("GET"), Ok(Method::Get));
    assert_eq!(Method::parse("*"), Ok(Method::Any));
    assert!(Method::parse("get").unwrap_err().contains("write `GET`"));
    assert!(Method::parse("BREW").is_err());

    assert!(parse_host("web.local").is_ok());
    assert!(parse_host("web.local:8080").is_ok());
    assert!(parse_host("[::1]:8080").is_ok());
    assert!(parse_host("10.0.0.1").is_ok());
    for bad in [
        "Web.local",
        "web..local",
        "-web",
        "web:0",
        "web:http",
        "[::1",
        "we b",
        "",
    ] {
        assert!(parse_host(bad).is_err(), "{bad:?}");
    }

    assert_eq!(parse_header_name("X-Api-Key"), Ok("x-api-key".into()));
    for bad in ["", "X Key", "X:Key", "Host", "Ü"] {
        assert!(parse_header_name(bad).is_err(), "{bad:?}");
    }
    assert!(parse_header_value("application/json").is_ok());
    assert!(parse_header_value("").is_ok());
    assert!(parse_header_value("a\tb").is_err());
    assert!(parse_header_value(&"v".repeat(129)).is_err());
}

#[test]
fn glob_matching() {
    let g = Glob::new("localhost/sensor*");
    assert!(g.matches("localhost/sensor") && g.matches("localhost/sensor:1.2"));
    assert!(!g.matches("docker.io/localhost/sensor"));
    assert!(Glob::new("*").matches(""));
    assert!(Glob::new("a*b*c").matches("abc") && Glob::new("a*b*c").matches("axxbyyc"));
    assert!(!Glob::new("a*b*b").matches("ab"));
    assert!(Glob::new("exact").matches("exact") && !Glob::new("exact").matches("exactly"));
}

#[test]
fn quarantine_cgroups() {
    assert_eq!(ok("version: 1\n").enforcement.quarantine_cgroups, None);
    let c = ok("version: 1\nenforcement:\n  quarantine_cgroups: [/libpod_parent, /default]\n");
    assert_eq!(
        c.enforcement.quarantine_cgroups,
        Some(vec![
            PathBuf::from("/libpod_parent"),
            PathBuf::from("/default")
        ])
    );
    assert_one(
        "version: 1\nenforcement:\n  quarantine_cgroups: [/a, b]\n",
        3,
        28,
        "enforcement.quarantine_cgroups[1]",
        "`b` must be an absolute path",
    );
    assert_one(
        "version: 1\nenforcement:\n  quarantine_cgroups: [/]\n",
        3,
        24,
        "enforcement.quarantine_cgroups[0]",
        "the root cgroup would gate every process of the host",
    );
}

#[test]
fn flow_events_transport_is_auto_unless_named() {
    use crate::kernel::EventsTransport;
    assert_eq!(ok("version: 1\n").flows.events_transport, None);
    let t = |v: &str| {
        ok(&format!("version: 1\nflows:\n  events_transport: {v}\n"))
            .flows
            .events_transport
    };
    assert_eq!(t("auto"), None);
    assert_eq!(t("ringbuf"), Some(EventsTransport::RingBuf));
    assert_eq!(t("perf"), Some(EventsTransport::Perf));
    assert_one(
        "version: 1\nflows:\n  events_transport: perfbuf\n",
        3,
        21,
        "flows.events_transport",
        "unknown value `perfbuf`; expected one of: auto, ringbuf, perf",
    );
}

#[test]
fn conntrack_timeouts_default_and_override() {
    let d = ok("version: 1\n");
    assert_eq!(d.conntrack, Conntrack::default());
    assert_eq!(
        d.conntrack.timeouts(),
        porin_common::ct::DEFAULT_TIMEOUTS,
        "the defaults are the programs' defaults"
    );
    let c = ok("version: 1\nconntrack:\n  timeouts:\n    udp: 2m\n    tcp_established: 1h\n");
    assert_eq!(c.conntrack.udp, Duration::from_secs(120));
    assert_eq!(c.conntrack.tcp_established, Duration::from_secs(3600));
    assert_eq!(
        c.conntrack.icmp,
        Conntrack::default().icmp,
        "others keep theirs"
    );
    let t = c.conntrack.timeouts();
    assert_eq!(t[usize::from(porin_common::ct::state::UDP)], 120);
    assert_eq!(
        t[usize::from(porin_common::ct::state::REVOKED)],
        t[usize::from(porin_common::ct::state::TCP_CLOSED)],
        "revoked lasts as long as closed"
    );
    assert_one(
        "version: 1\nconntrack:\n  timeouts:\n    udp: 0s\n",
        4,
        10,
        "conntrack.timeouts.udp",
        "is out of range 1s-720h",
    );
    assert_one(
        "version: 1\nconntrack:\n  timeouts:\n    tcp: 1h\n",
        4,
        5,
        "conntrack.timeouts.tcp",
        "unknown field",
    );
}

#[test]
fn conntrack_quota() {
    assert_eq!(
        ok("version: 1\n").conntrack.max_per_endpoint,
        porin_common::ct::DEFAULT_MAX_PER_ENDPOINT
    );
    let c = ok("version: 1\nconntrack:\n  max_per_endpoint: 0\n");
    assert_eq!(c.conntrack.max_per_endpoint, 0, "no limit");
    assert_one(
        "version: 1\nconntrack:\n  max_per_endpoint: 70000\n",
        3,
        21,
        "conntrack.max_per_endpoint",
        "out of range",
    );
}

#[test]
fn conntrack_http_quota() {
    assert_eq!(
        ok("version: 1\n").conntrack.max_http_per_endpoint,
        porin_common::ct::DEFAULT_MAX_HTTP_PER_ENDPOINT
    );
    let c = ok("version: 1\nconntrack:\n  max_http_per_endpoint: 64\n");
    assert_eq!(c.conntrack.max_http_per_endpoint, 64);
    assert_eq!(
        c.conntrack.max_per_endpoint,
        porin_common::ct::DEFAULT_MAX_PER_ENDPOINT,
        "the other quota keeps its default"
    );
    assert_one(
        "version: 1\nconntrack:\n  max_http_per_endpoint: 20000\n",
        3,
        26,
        "conntrack.max_http_per_endpoint",
        "out of range",
    );
}

// ---- MQTT rules ------------------------------------------------------------

fn mqtt_policy(body: &str) -> String {
    format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         ports: [1883]\n    mqtt:\n{body}"
    )
}

#[test]
fn mqtt_rules_parse() {
    let c = ok(&mqtt_policy(
        "      client_id: [\"cam-*\", hub]\n      publish: \"sensors/+/t\"\n      \
         subscribe: [\"cmd/{client_id}/#\"]\n      max_qos: 1\n      retain: false\n      \
         max_message_size: 4KiB\n",
    ));
    let m = c.policies[0].mqtt.as_ref().expect("mqtt rules");
    assert_eq!(
        m.client_ids,
        [
            ClientId::Prefix("cam-".into()),
            ClientId::Exact("hub".into())
        ]
    );
    assert_eq!(m.publish[0].to_string(), "sensors/+/t");
    assert_eq!(m.subscribe[0].levels[1], Level::ClientId);
    assert_eq!(
        (m.max_qos, m.retain, m.max_message_size),
        (1, false, Some(4096))
    );
    // Defaults: any client, nothing to publish or subscribe, QoS 2, retain.
    let c = ok(&mqtt_policy("      publish: [a]\n"));
    let m = c.policies[0].mqtt.as_ref().unwrap();
    assert!(m.client_ids.is_empty() && m.subscribe.is_empty());
    assert_eq!((m.max_qos, m.retain, m.max_message_size), (2, true, None));
}

#[test]
fn mqtt_mistakes_name_their_place() {
    assert_one(
        &mqtt_policy("      publish: [\"a/#/b\"]\n"),
        16,
        17,
        "policies[0].mqtt.publish[0]",
        "`#` must be the last level",
    );
    assert_one(
        &mqtt_policy("      client_id: \"a*b\"\n"),
        16,
        18,
        "policies[0].mqtt.client_id",
        "`*` may only end a client id pattern",
    );
    assert_one(
        &mqtt_policy("      max_qos: 3\n"),
        16,
        16,
        "policies[0].mqtt.max_qos",
        "3 is out of range 0-2",
    );
    assert_one(
        &mqtt_policy("      topics: [a]\n"),
        16,
        7,
        "policies[0].mqtt.topics",
        "unknown field",
    );
    assert_one(
        &mqtt_policy("      subscribe: [a, a]\n"),
        16,
        22,
        "policies[0].mqtt.subscribe[1]",
        "",
    );
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         mqtt:\n      publish: [a]\n"
    );
    assert_one(
        &src,
        15,
        7,
        "policies[0].mqtt",
        "MQTT rules need explicit `ports`",
    );
    let src = format!(
        "{GROUPS}policies:\n  - name: p\n    from: [sensor]\n    to: [web]\n    \
         ports: [80]\n    http:\n      - method: GET\n        path: /\n    \
         mqtt:\n      publish: [a]\n"
    );
    assert_one(&src, 19, 7, "policies[0].mqtt", "not both");
}
