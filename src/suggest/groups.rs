//! Groups for the containers seen: the smallest set of label keys whose
//! values tell every distinct label set apart ([`choose_keys`]), one group
//! per distinct selector ([`plan`]).
//!
//! Containers with the same labels (replicas) share a group. A container
//! without labels is selected by its name. When no key set keeps one
//! selector from matching another container's labels (`{app: web}` and
//! `{app: web, tier: db}`), the more specific group comes first: groups
//! are matched in file order.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{check_name, RESERVED_NAMES};

/// How a group selects its containers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Select {
    Labels(BTreeMap<String, String>),
    /// An exact container name (a container without labels).
    Name(String),
}

/// A group to suggest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    pub name: String,
    pub select: Select,
    /// Ids of the containers it selects.
    pub ids: Vec<String>,
    /// Their names, for the comment.
    pub members: Vec<String>,
}

/// Above this many label keys the search is greedy rather than exhaustive.
const EXHAUSTIVE_KEYS: usize = 12;

/// The label keys that tell `classes` (distinct, non-empty label sets)
/// apart: the fewest keys such that every class keeps at least one label
/// and no two classes keep the same labels. Among sets of that size: the
/// fewest pairs where one selector is contained in another, then the keys
/// most classes have, then the first in sorted order.
pub fn choose_keys(classes: &[&BTreeMap<String, String>]) -> Vec<String> {
    let keys: Vec<&String> = classes
        .iter()
        .flat_map(|c| c.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.is_empty() || keys.is_empty() {
        return Vec::new();
    }
    let score = |combo: &[usize]| -> Option<(usize, usize)> {
        let sels: Vec<BTreeMap<&String, &String>> =
            classes.iter().map(|c| project(c, &keys, combo)).collect();
        if sels.iter().any(BTreeMap::is_empty) {
            return None;
        }
        let mut contained = 0;
        for (i, a) in sels.iter().enumerate() {
            for b in &sels[i + 1..] {
                if a == b {
                    return None;
                }
                if a.iter().all(|(k, v)| b.get(k) == Some(v))
                    || b.iter().all(|(k, v)| a.get(k) == Some(v))
                {
                    contained += 1;
                }
            }
        }
        let coverage: usize = combo
            .iter()
            .map(|&k| classes.iter().filter(|c| c.contains_key(keys[k])).count())
            .sum();
        Some((contained, usize::MAX - coverage))
    };
    let chosen: Vec<usize> = if keys.len() <= EXHAUSTIVE_KEYS {
        (1..=keys.len())
            .find_map(|size| {
                combinations(keys.len(), size)
                    .into_iter()
                    .filter_map(|c| score(&c).map(|s| (s, c)))
                    .min()
                    .map(|(_, c)| c)
            })
            .unwrap_or_else(|| (0..keys.len()).collect())
    } else {
        greedy(classes, &keys)
    };
    chosen.into_iter().map(|k| keys[k].clone()).collect()
}

fn project<'a>(
    c: &'a BTreeMap<String, String>,
    keys: &[&String],
    combo: &[usize],
) -> BTreeMap<&'a String, &'a String> {
    combo
        .iter()
        .filter_map(|&k| c.get_key_value(keys[k]))
        .collect()
}

/// Adds the key that leaves the most distinct selectors until all are.
fn greedy(classes: &[&BTreeMap<String, String>], keys: &[&String]) -> Vec<usize> {
    let mut combo: Vec<usize> = Vec::new();
    let distinct = |combo: &[usize]| {
        let sels: BTreeSet<_> = classes.iter().map(|c| project(c, keys, combo)).collect();
        let empty = classes
            .iter()
            .filter(|c| project(c, keys, combo).is_empty())
            .count();
        (sels.len(), usize::MAX - empty)
    };
    while combo.len() < keys.len() {
        let (d, _) = distinct(&combo);
        let all_kept = classes.iter().all(|c| !project(c, keys, &combo).is_empty());
        if d == classes.len() && all_kept {
            break;
        }
        let next = (0..keys.len())
            .filter(|k| !combo.contains(k))
            .max_by_key(|&k| {
                let mut c = combo.clone();
                c.push(k);
                (distinct(&c), usize::MAX - k)
            })
            .expect("a key is left");
        combo.push(next);
        combo.sort_unstable();
    }
    combo
}

/// Every `size`-element subset of `0..n`, in lexicographic order.
fn combinations(n: usize, size: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut c: Vec<usize> = (0..size).collect();
    if size > n {
        return out;
    }
    loop {
        out.push(c.clone());
        let Some(i) = (0..size).rev().find(|&i| c[i] != i + n - size) else {
            return out;
        };
        c[i] += 1;
        for j in i + 1..size {
            c[j] = c[j - 1] + 1;
        }
    }
}

/// One group per distinct selector over `containers` (id, name, labels),
/// and the label keys chosen. Groups that select more labels come first.
pub fn plan(
    containers: &[(&str, &str, &BTreeMap<String, String>)],
) -> (Vec<GroupPlan>, Vec<String>) {
    let classes: Vec<&BTreeMap<String, String>> = containers
        .iter()
        .map(|(_, _, l)| *l)
        .filter(|l| !l.is_empty())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let keys = choose_keys(&classes);
    let mut by_select: BTreeMap<Select, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (id, name, labels) in containers {
        let select = if labels.is_empty() {
            Select::Name((*name).to_string())
        } else {
            Select::Labels(
                keys.iter()
                    .filter_map(|k| labels.get_key_value(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        };
        let e = by_select.entry(select).or_default();
        e.0.push((*id).to_string());
        e.1.push((*name).to_string());
    }
    let mut taken = BTreeSet::new();
    let mut groups: Vec<GroupPlan> = by_select
        .into_iter()
        .map(|(select, (ids, members))| {
            let base = match &select {
                Select::Labels(l) => l.values().cloned().collect::<Vec<_>>().join("-"),
                Select::Name(n) => n.clone(),
            };
            GroupPlan {
                name: unique_name(&base, "group", &mut taken),
                select,
                ids,
                members,
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        let size = |g: &GroupPlan| match &g.select {
            Select::Labels(l) => l.len(),
            Select::Name(_) => usize::MAX,
        };
        size(b).cmp(&size(a)).then_with(|| a.name.cmp(&b.name))
    });
    (groups, keys)
}

/// `text` made a valid name (`[a-z0-9][a-z0-9-_.]{0,62}`, not reserved)
/// that is not in `taken` (then added): `fallback` when nothing is left,
/// `-2`, `-3`, ... on a clash.
pub fn unique_name(text: &str, fallback: &str, taken: &mut BTreeSet<String>) -> String {
    let mut s: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    s = s
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    s.truncate(55);
    if s.is_empty() {
        s = fallback.to_string();
    }
    if RESERVED_NAMES.contains(&s.as_str()) || s.starts_with("reserved") {
        s = format!("{s}-{fallback}");
    }
    let mut name = s.clone();
    let mut n = 2;
    while taken.contains(&name) || check_name(&name).is_err() {
        name = format!("{s}-{n}");
        n += 1;
    }
    taken.insert(name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn combinations_are_all_subsets_of_a_size() {
        assert_eq!(
            combinations(4, 2),
            [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
        );
        assert_eq!(combinations(2, 3), Vec::<Vec<usize>>::new());
        assert_eq!(combinations(3, 3), [[0, 1, 2]]);
    }

    /// Label sets, and the keys expected.
    type Case = (
        &'static [&'static [(&'static str, &'static str)]],
        &'static [&'static str],
    );

    const CASES: &[Case] = &[
        // One key tells them apart; `version` is the same everywhere.
        (
            &[
                &[("app", "web"), ("version", "1")],
                &[("app", "db"), ("version", "1")],
            ],
            &["app"],
        ),
        // `app` is shared by two: `tier` alone separates all three.
        (
            &[
                &[("app", "shop"), ("tier", "web")],
                &[("app", "shop"), ("tier", "db")],
                &[("app", "cam"), ("tier", "edge")],
            ],
            &["tier"],
        ),
        // Neither key alone does: both are needed.
        (
            &[
                &[("app", "shop"), ("tier", "web")],
                &[("app", "shop"), ("tier", "db")],
                &[("app", "cam"), ("tier", "web")],
            ],
            &["app", "tier"],
        ),
        // A container lacking the separating key keeps another one.
        (&[&[("app", "web")], &[("role", "db")]], &["app", "role"]),
        // One class: one key, the first.
        (&[&[("app", "web"), ("owner", "ops")]], &["app"]),
    ];

    #[test]
    fn the_fewest_keys_that_separate_the_label_sets() {
        for (sets, want) in CASES {
            let owned: Vec<BTreeMap<String, String>> = sets.iter().map(|s| labels(s)).collect();
            let refs: Vec<&BTreeMap<String, String>> = owned.iter().collect();
            assert_eq!(choose_keys(&refs), *want, "{sets:?}");
            let greedy: Vec<String> = {
                let keys: Vec<&String> = refs
                    .iter()
                    .flat_map(|c| c.keys())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                greedy(&refs, &keys)
                    .into_iter()
                    .map(|k| keys[k].clone())
                    .collect()
            };
            // The greedy search separates them too (maybe with more keys).
            let sels: BTreeSet<Vec<(&String, &String)>> = refs
                .iter()
                .map(|c| c.iter().filter(|(k, _)| greedy.contains(k)).collect())
                .collect();
            assert_eq!(sels.len(), refs.len(), "{sets:?}: greedy {greedy:?}");
        }
    }

    #[test]
    fn replicas_share_a_group_and_specific_groups_come_first() {
        let web = labels(&[("app", "web")]);
        let web_db = labels(&[("app", "web"), ("tier", "db")]);
        let none = BTreeMap::new();
        let (groups, keys) = plan(&[
            ("1", "web-1", &web),
            ("2", "web-2", &web),
            ("3", "webdb", &web_db),
            ("4", "Lonely_One", &none),
        ]);
        assert_eq!(keys, ["app", "tier"]);
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["lonely_one", "web-db", "web"]);
        assert_eq!(groups[0].select, Select::Name("Lonely_One".into()));
        assert_eq!(groups[2].ids, ["1", "2"]);
        assert_eq!(groups[2].members, ["web-1", "web-2"]);
    }

    #[test]
    fn names_are_valid_unique_and_not_reserved() {
        let mut taken = BTreeSet::new();
        assert_eq!(unique_name("Web Server!", "g", &mut taken), "web-server-");
        assert_eq!(unique_name("web server?", "g", &mut taken), "web-server--2");
        assert_eq!(unique_name("world", "group", &mut taken), "world-group");
        assert_eq!(unique_name("--", "group", &mut taken), "group");
        assert_eq!(unique_name("", "group", &mut taken), "group-2");
        let long = unique_name(&"x".repeat(100), "g", &mut taken);
        assert!(check_name(&long).is_ok() && long.len() <= 63);
    }
}
