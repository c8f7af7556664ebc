//! The set of known endpoints and the events a new scan implies.
//!
//! Pure bookkeeping: given the endpoints of a scan, it says what was added,
//! what changed and what went away, so the watcher and the tests share one
//! definition of "an event".

use std::collections::BTreeMap;

use super::endpoint::{Endpoint, EndpointKey};

/// A change in the set of endpoints, for the datapath and the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Added(Endpoint),
    /// Something about a known endpoint changed (labels, addresses, veth...).
    Updated {
        old: Box<Endpoint>,
        new: Box<Endpoint>,
    },
    Removed(Endpoint),
}

/// The endpoints known after the last scan.
#[derive(Debug, Default)]
pub struct Inventory {
    endpoints: BTreeMap<EndpointKey, Endpoint>,
}

impl Inventory {
    pub fn get(&self, key: &EndpointKey) -> Option<&Endpoint> {
        self.endpoints.get(key)
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// Replaces the known set with `scanned` and returns the events, removals
    /// first (so a container replaced under the same key is never seen twice
    /// by a consumer that indexes by address), then additions and updates in
    /// key order.
    pub fn apply(&mut self, scanned: Vec<Endpoint>) -> Vec<Event> {
        let mut next: BTreeMap<EndpointKey, Endpoint> =
            scanned.into_iter().map(|e| (e.key.clone(), e)).collect();
        let mut events = Vec::new();
        let old = std::mem::take(&mut self.endpoints);
        let mut kept = Vec::new();
        for (key, ep) in old {
            match next.get(&key) {
                None => events.push(Event::Removed(ep)),
                Some(_) => kept.push((key, ep)),
            }
        }
        for (key, old_ep) in kept {
            let new_ep = next.remove(&key).expect("key present in next");
            if new_ep != old_ep {
                events.push(Event::Updated {
                    old: Box::new(old_ep),
                    new: Box::new(new_ep.clone()),
                });
            }
            self.endpoints.insert(key, new_ep);
        }
        for (key, ep) in next {
            events.push(Event::Added(ep.clone()));
            self.endpoints.insert(key, ep);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Runtime;

    fn ep(id: &str, name: &str) -> Endpoint {
        Endpoint {
            key: EndpointKey {
                runtime: Runtime::Podman,
                namespace: String::new(),
                id: id.into(),
            },
            name: name.into(),
            image: "localhost/bb:latest".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            cgroup: format!("/libpod_parent/libpod-{id}"),
            pids: vec![1],
            netns_inode: 1,
            host_network: false,
            interfaces: vec![],
            labels_from: String::new(),
            netns_from: String::new(),
            foreign_netns: Vec::new(),
        }
    }

    #[test]
    fn first_scan_adds_everything() {
        let mut inv = Inventory::default();
        let events = inv.apply(vec![ep("a", "web"), ep("b", "db")]);
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| matches!(e, Event::Added(_))));
        assert_eq!(inv.len(), 2);
    }

    #[test]
    fn an_unchanged_scan_emits_nothing() {
        let mut inv = Inventory::default();
        inv.apply(vec![ep("a", "web")]);
        assert!(inv.apply(vec![ep("a", "web")]).is_empty());
    }

    #[test]
    fn a_change_is_an_update_and_a_missing_one_a_removal() {
        let mut inv = Inventory::default();
        inv.apply(vec![ep("a", "web"), ep("b", "db")]);
        let mut a2 = ep("a", "web");
        a2.labels.insert("app".into(), "web".into());
        let events = inv.apply(vec![a2.clone()]);
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0], Event::Removed(e) if e.name == "db"),
            "removals first"
        );
        assert!(matches!(&events[1], Event::Updated { new, .. } if **new == a2));
        assert_eq!(inv.len(), 1);
        assert_eq!(inv.get(&a2.key), Some(&a2));
    }
}
