//! What the identity-policy maps should hold, as plain sorted collections:
//! the manager's input, and the unit of comparison between two states.

use std::collections::BTreeMap;

use porin_common::datapath::{EndpointInfo, Identity, PolicyKey, PolicyValue};

/// The complete desired content of the policy datapath's maps. Policy keys
/// have generation 0 here; the manager sets the generation it writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// Host veth ifindex → endpoint.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    pub ip4: BTreeMap<[u8; 4], Identity>,
    pub ip6: BTreeMap<[u8; 16], Identity>,
    /// (prefix length, network address) → identity.
    pub net4: BTreeMap<(u8, [u8; 4]), Identity>,
    pub net6: BTreeMap<(u8, [u8; 16]), Identity>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
}

/// Entries to write and to delete to go from one content to another.
#[derive(Debug, PartialEq, Eq)]
pub struct Delta<K, V> {
    pub upsert: Vec<(K, V)>,
    pub remove: Vec<K>,
}

/// What changes between `old` and `new` (new or changed values are
/// upserted; keys only in `old` are removed).
pub fn delta<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Delta<K, V> {
    Delta {
        upsert: new
            .iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        remove: old
            .keys()
            .filter(|k| !new.contains_key(k))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_lists_new_changed_and_gone_entries() {
        let old: BTreeMap<u32, u32> = [(1, 10), (2, 20), (3, 30)].into();
        let new: BTreeMap<u32, u32> = [(2, 20), (3, 31), (4, 40)].into();
        let d = delta(&old, &new);
        assert_eq!(d.upsert, vec![(3, 31), (4, 40)]);
        assert_eq!(d.remove, vec![1]);
        let same = delta(&new, &new);
        assert!(same.upsert.is_empty() && same.remove.is_empty());
    }
}
