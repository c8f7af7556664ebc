//! Discovery against real containers: Podman, a private containerd and a
//! private dockerd (Debian's docker.io), each
//! container started with labels at `run` time, found by scanning cgroups
//! and reading the runtimes' on-disk state. Needs root.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::Path,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use porin::{
    config::{self, Config},
    discovery::{
        endpoint::Endpoint, inventory::Event, live::LiveDiscovery, scanner::Scanner,
        watch::Watcher, Runtime,
    },
    testing::{
        containerd::{Containerd, NAMESPACE},
        docker::Dockerd,
        podman::{podman, podman_ok, PodmanContainer, Spec},
        require_root,
    },
};

fn config(yaml: &str) -> Config {
    config::parse(yaml, "<test>").unwrap_or_else(|e| panic!("test config invalid:\n{e}"))
}

fn scan(cfg: &Config) -> Vec<Endpoint> {
    let mut scanner = Scanner::new(&cfg.discovery).expect("scanner");
    // Containers have finished starting when `run` returned, so one pass
    // must see them ready.
    let outcome = scanner.scan(false).expect("scan");
    outcome.ready
}

fn find<'a>(eps: &'a [Endpoint], name: &str) -> &'a Endpoint {
    eps.iter().find(|e| e.name == name).unwrap_or_else(|| {
        panic!(
            "{name} not discovered; found {:?}",
            eps.iter().map(|e| &e.name).collect::<Vec<_>>()
        )
    })
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The host-side veth `ep` reports really is the peer of the container's
/// eth0: same ifindex as in /sys, and its iflink is eth0's ifindex.
fn assert_host_veth(ep: &Endpoint) {
    let eth0 = ep
        .interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .unwrap_or_else(|| panic!("{}: no eth0 in {:?}", ep.name, ep.interfaces));
    let peer = eth0
        .host_peer
        .as_ref()
        .unwrap_or_else(|| panic!("{}: no host veth", ep.name));
    let sys = Path::new("/sys/class/net").join(&peer.name);
    let ifindex: u32 = fs::read_to_string(sys.join("ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let iflink: u32 = fs::read_to_string(sys.join("iflink"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(ifindex, peer.ifindex, "{}: host veth ifindex", ep.name);
    assert_eq!(
        iflink, eth0.ifindex,
        "{}: host veth's peer is the container's eth0",
        ep.name
    );
}

#[test]
fn podman_containers_are_discovered_with_labels_ip_and_veth() {
    require_root("podman discovery test");
    let specs = [
        ("dp-sensor", [("app", "sensor"), ("site", "north")]),
        ("dp-web", [("app", "web"), ("site", "north")]),
        ("dp-db", [("app", "db"), ("site", "south")]),
    ];
    let containers: Vec<PodmanContainer> = specs
        .iter()
        .map(|(tag, l)| {
            PodmanContainer::run(
                tag,
                &Spec {
                    labels: l,
                    ..Default::default()
                },
            )
        })
        .collect();
    let host = PodmanContainer::run(
        "dp-hostnet",
        &Spec {
            labels: &[("app", "agent")],
            args: &["--network", "host"],
            ..Default::default()
        },
    );
    let cfg = config("version: 1\n");
    let eps = scan(&cfg);
    for (c, (_, l)) in containers.iter().zip(&specs) {
        let ep = find(&eps, &c.name);
        assert_eq!(ep.key.runtime, Runtime::Podman);
        assert_eq!(ep.key.id, c.id);
        assert_eq!(ep.image, porin::testing::podman::IMAGE);
        assert_eq!(ep.labels, labels(l));
        assert!(!ep.host_network);
        assert!(
            ep.pids.contains(&c.pid()),
            "{}: init pid among the cgroup's pids",
            c.name
        );
        let ip = c.ipv4().expect("podman gave an IPv4 address");
        assert!(
            ep.addresses().any(|a| a == ip),
            "{}: {ip} not in {:?}",
            c.name,
            ep.interfaces
        );
        assert_host_veth(ep);
        // Debian 12's Podman 4 keeps BoltDB; the record names the netns
        // file Podman made.
        assert!(
            ep.labels_from.ends_with("libpod/bolt_state.db"),
            "{}: labels from {:?}",
            c.name,
            ep.labels_from
        );
        assert!(
            ep.netns_from.starts_with("runtime record: /run/netns/"),
            "{}: netns from {:?}",
            c.name,
            ep.netns_from
        );
    }
    let h = find(&eps, &host.name);
    assert!(h.host_network, "host-network container marked as such");
    assert!(
        h.interfaces.is_empty(),
        "the host's interfaces are not listed as the container's"
    );
    assert_eq!(h.labels, labels(&[("app", "agent")]));

    // Stopping one removes it from the next scan; the others stay.
    let mut containers = containers;
    let gone = containers.remove(1);
    let gone_name = gone.name.clone();
    gone.remove();
    let eps = scan(&cfg);
    assert!(
        eps.iter().all(|e| e.name != gone_name),
        "{gone_name} still reported after rm"
    );
    for c in &containers {
        find(&eps, &c.name);
    }
}

#[test]
fn containerd_containers_are_discovered_with_labels_ip_and_veth() {
    require_root("containerd discovery test");
    let ctrd = Containerd::start("disc", 21);
    ctrd.import_image();
    let cfg = config(&format!(
        "version: 1\ndiscovery:\n  containerd:\n    - state_dir: {}\n      root_dir: {}\n",
        ctrd.state_dir.display(),
        ctrd.root_dir.display()
    ));
    let specs = [
        ("dc-sensor", [("app", "sensor"), ("site", "north")]),
        ("dc-web", [("app", "web"), ("site", "north")]),
        ("dc-db", [("app", "db"), ("site", "south")]),
    ];
    let mut containers: Vec<_> = specs.iter().map(|(id, l)| ctrd.run(id, l, false)).collect();
    let host = ctrd.run("dc-hostnet", &[("app", "agent")], true);
    let eps = scan(&cfg);
    for (c, (id, l)) in containers.iter().zip(&specs) {
        let ep = find(&eps, id);
        assert_eq!(ep.key.runtime, Runtime::Containerd);
        assert_eq!(ep.key.namespace, NAMESPACE);
        assert_eq!(ep.key.id, *id);
        assert_eq!(ep.image, porin::testing::podman::IMAGE);
        for (k, v) in l.iter() {
            assert_eq!(
                ep.labels.get(*k).map(String::as_str),
                Some(*v),
                "{id}: label {k}"
            );
        }
        assert!(ep.pids.contains(&c.pid()));
        // The CNI bridge of this test hands out 10.233.21.0/24.
        assert!(
            ep.addresses()
                .any(|a| a.to_string().starts_with("10.233.21.")),
            "{id}: CNI address missing from {:?}",
            ep.interfaces
        );
        assert_host_veth(ep);
        assert_eq!(
            ep.labels_from,
            ctrd.root_dir
                .join("io.containerd.metadata.v1.bolt/meta.db")
                .display()
                .to_string()
        );
        assert_eq!(
            ep.netns_from,
            format!("runtime record: init pid {}", c.pid()),
            "{id}"
        );
    }
    assert!(find(&eps, "dc-hostnet").host_network);
    drop(host);

    let gone = containers.remove(0);
    gone.remove();
    let eps = scan(&cfg);
    assert!(
        eps.iter().all(|e| e.name != "dc-sensor"),
        "removed container still reported"
    );
    find(&eps, "dc-web");
}

#[test]
fn docker_containers_are_discovered_with_labels_ip_and_veth() {
    require_root("docker discovery test");
    let dockerd = Dockerd::start("disc", 31);
    dockerd.load_image();
    let cfg = config(&format!(
        "version: 1\ndiscovery:\n  docker_root: {}\n",
        dockerd.data_root.display()
    ));
    let specs = [
        ("porin-t-dk-sensor", [("app", "sensor"), ("site", "north")]),
        ("porin-t-dk-web", [("app", "web"), ("site", "south")]),
    ];
    let containers: Vec<_> = specs
        .iter()
        .map(|(name, l)| dockerd.run(name, l, &[]))
        .collect();
    let eps = scan(&cfg);
    for (c, (name, l)) in containers.iter().zip(&specs) {
        let ep = find(&eps, name);
        assert_eq!(ep.key.runtime, Runtime::Docker);
        assert_eq!(ep.key.id, c.id);
        assert_eq!(ep.image, porin::testing::podman::IMAGE);
        assert_eq!(ep.labels, labels(l));
        assert!(ep.pids.contains(&c.pid()));
        let ip = IpAddr::V4(c.ipv4());
        assert!(
            ep.addresses().any(|a| a == ip),
            "{name}: {ip} not in {:?}",
            ep.interfaces
        );
        assert_host_veth(ep);
        assert_eq!(
            ep.labels_from,
            dockerd
                .data_root
                .join("containers")
                .join(&c.id)
                .join("config.v2.json")
                .display()
                .to_string()
        );
        assert_eq!(
            ep.netns_from,
            format!("runtime record: {}", c.sandbox_key()),
            "{name}"
        );
    }
}

/// Waits for an event about container `name` matching `want`.
fn wait_event(rx: &mpsc::Receiver<Event>, name: &str, added: bool, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Added(e)) if added && e.name == name => return Instant::now(),
            Ok(Event::Removed(e)) if !added && e.name == name => return Instant::now(),
            Ok(_) => {}
            Err(_) => panic!(
                "no {} event for {name} within {within:?}",
                if added { "Added" } else { "Removed" }
            ),
        }
    }
}

#[test]
fn live_discovery_reports_podman_containers_coming_and_going() {
    require_root("live discovery test");
    let cfg = config("version: 1\n");
    let scanner = Scanner::new(&cfg.discovery).unwrap();
    let (watcher, stopper) = Watcher::new().unwrap();
    let (tx, rx) = mpsc::channel();
    // A long resync: only inotify and the pending retries can be what finds
    // the container in time.
    let handle = thread::spawn(move || {
        LiveDiscovery::new(scanner).run(watcher, Duration::from_secs(3600), tx)
    });
    thread::sleep(Duration::from_millis(200));
    let c = PodmanContainer::run(
        "dl-live",
        &Spec {
            labels: &[("app", "live")],
            ..Default::default()
        },
    );
    wait_event(&rx, &c.name, true, Duration::from_secs(5));
    let name = c.name.clone();
    c.remove();
    wait_event(&rx, &name, false, Duration::from_secs(5));
    stopper.stop();
    handle.join().unwrap();
}

/// A Podman bridge network of the test's own, removed on drop (and before
/// use, in case an aborted run left it).
struct PodmanNetwork(&'static str);

impl PodmanNetwork {
    fn create(name: &'static str, subnet: &str) -> Self {
        let _ = podman(&["network", "rm", "-f", name]);
        podman_ok(&["network", "create", "--subnet", subnet, name]);
        PodmanNetwork(name)
    }
}

impl Drop for PodmanNetwork {
    fn drop(&mut self) {
        let _ = podman(&["network", "rm", "-f", self.0]);
    }
}

#[test]
fn live_discovery_sees_a_network_connected_to_a_running_container() {
    require_root("network connect test");
    let cfg = config("version: 1\n");
    let scanner = Scanner::new(&cfg.discovery).unwrap();
    let (watcher, stopper) = Watcher::new().unwrap();
    let (tx, rx) = mpsc::channel();
    // A long resync: only the link notification can make the new address
    // show up in time (connecting a network touches no cgroup).
    let handle = thread::spawn(move || {
        LiveDiscovery::new(scanner).run(watcher, Duration::from_secs(3600), tx)
    });
    let c = PodmanContainer::run("dl-connect", &Spec::default());
    wait_event(&rx, &c.name, true, Duration::from_secs(5));
    let net = PodmanNetwork::create("porin-t-dl-connect", "10.89.251.0/24");
    podman_ok(&["network", "connect", net.0, &c.name]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let updated = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Updated { new, .. }) if new.name == c.name => {
                let addrs: Vec<IpAddr> = new.addresses().collect();
                if addrs
                    .iter()
                    .any(|a| a.to_string().starts_with("10.89.251."))
                {
                    break new;
                }
            }
            Ok(_) => {}
            Err(_) => panic!("no update with the connected network's address within 5 s"),
        }
    };
    assert_eq!(
        updated.host_veths().count(),
        2,
        "both veths: {:?}",
        updated.interfaces
    );
    podman_ok(&["network", "disconnect", net.0, &c.name]);
    c.remove();
    stopper.stop();
    handle.join().unwrap();
}
