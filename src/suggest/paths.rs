//! HTTP rules from observed requests: one exact rule per method and path,
//! folded into a prefix rule (`/api/v1/readings/*`) where the paths below
//! one prefix are many ([`fold`]).
//!
//! The fold goes top down, per method: a prefix 1 to 7 segments deep (the
//! datapath's limit for prefix rules) whose requests go on into at least
//! `fold_min` different next segments, or into at least two that all look
//! like identifiers (numbers, long hex strings, UUIDs), becomes one prefix
//! rule covering everything below it. The root is never folded (`/*`
//! would allow every path). A path the record cut at 64 bytes becomes a
//! prefix rule at its last complete segment.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::HttpPath;

/// Deepest prefix rule the datapath matches (`MAX_SEGMENTS - 1`).
pub const MAX_PREFIX_DEPTH: usize = porin_common::http::MAX_SEGMENTS - 1;

/// A rule to suggest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub method: String,
    /// As written in the config: `/a/b` or `/a/*`.
    pub path: String,
    /// The observed paths a prefix rule stands for (empty for an exact
    /// rule).
    pub folded: Vec<String>,
}

/// Rules for the observed (method, path, truncated) requests; and the
/// requests no rule can be written for, with why.
pub fn fold(
    requests: &BTreeSet<(String, String, bool)>,
    fold_min: usize,
) -> (Vec<Rule>, Vec<String>) {
    let mut by_method: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
    let mut refused = Vec::new();
    for (method, path, truncated) in requests {
        if crate::config::Method::parse(method).is_err() {
            refused.push(format!("{method} {path}: method not expressible in a rule"));
            continue;
        }
        let entry = if *truncated {
            // Cut at the last complete segment, within the depth limit.
            let cut = path.rfind('/').map_or("", |i| &path[..i]);
            let segs: Vec<&str> = cut.split('/').skip(1).take(MAX_PREFIX_DEPTH).collect();
            if segs.is_empty() {
                refused.push(format!(
                    "{method} {path}: the record kept only the first {} bytes of its \
                     first segment",
                    path.len()
                ));
                continue;
            }
            Entry {
                segs: segs.iter().map(|s| s.to_string()).collect(),
                prefix: true,
                seen: path.clone(),
            }
        } else {
            Entry {
                segs: path.split('/').skip(1).map(str::to_string).collect(),
                prefix: false,
                seen: path.clone(),
            }
        };
        let text = entry.text();
        if let Err(e) = HttpPath::parse(&text) {
            refused.push(format!("{method} {path}: {e}"));
            continue;
        }
        by_method.entry(method.as_str()).or_default().push(entry);
    }
    let mut rules = Vec::new();
    for (method, entries) in by_method {
        walk(method, &[], entries, fold_min, &mut rules);
    }
    rules.sort();
    rules.dedup();
    (rules, refused)
}

#[derive(Debug, Clone)]
struct Entry {
    segs: Vec<String>,
    /// Everything below `segs` (a truncated path).
    prefix: bool,
    seen: String,
}

impl Entry {
    fn text(&self) -> String {
        let body: String = self.segs.iter().map(|s| format!("/{s}")).collect();
        if self.prefix {
            format!("{body}/*")
        } else if body.is_empty() {
            "/".into()
        } else {
            body
        }
    }
}

fn walk(method: &str, at: &[String], entries: Vec<Entry>, fold_min: usize, out: &mut Vec<Rule>) {
    let depth = at.len();
    let below: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.segs.len() > depth)
        .map(|e| e.segs[depth].as_str())
        .collect();
    let cut_here = entries.iter().any(|e| e.prefix && e.segs.len() == depth);
    let many =
        below.len() >= fold_min.max(2) || (below.len() >= 2 && below.iter().all(|s| id_like(s)));
    if (1..=MAX_PREFIX_DEPTH).contains(&depth) && (cut_here || many) {
        let mut folded: Vec<String> = entries.iter().map(|e| e.seen.clone()).collect();
        folded.sort();
        folded.dedup();
        out.push(Rule {
            method: method.to_string(),
            path: Entry {
                segs: at.to_vec(),
                prefix: true,
                seen: String::new(),
            }
            .text(),
            folded,
        });
        return;
    }
    let mut next: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        if e.segs.len() == depth {
            // An exact path ending here (a prefix here was folded above;
            // [`fold`] refuses one at the root).
            out.push(Rule {
                method: method.to_string(),
                path: e.text(),
                folded: Vec::new(),
            });
        } else {
            next.entry(e.segs[depth].clone()).or_default().push(e);
        }
    }
    for (seg, group) in next {
        let mut path = at.to_vec();
        path.push(seg);
        walk(method, &path, group, fold_min, out);
    }
}

/// Numbers, hex strings of 8 or more characters with a digit, UUIDs.
fn id_like(s: &str) -> bool {
    let hex = |c: char| c.is_ascii_hexdigit();
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        || (s.len() >= 8 && s.chars().all(hex) && s.chars().any(|c| c.is_ascii_digit()))
        || (s.len() == 36
            && s.chars().enumerate().all(|(i, c)| {
                if [8, 13, 18, 23].contains(&i) {
                    c == '-'
                } else {
                    hex(c)
                }
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(items: &[(&str, &str)]) -> BTreeSet<(String, String, bool)> {
        items
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string(), false))
            .collect()
    }

    fn paths(rules: &[Rule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// Requests, and the rules expected with fold_min 3.
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );

    const CASES: &[Case] = &[
        // The example: two ids under one prefix.
        (
            &[
                ("GET", "/api/v1/readings/123"),
                ("GET", "/api/v1/readings/456"),
            ],
            &["GET /api/v1/readings/*"],
        ),
        // Two words are not folded; the root never is.
        (
            &[("GET", "/health"), ("GET", "/metrics"), ("GET", "/")],
            &["GET /", "GET /health", "GET /metrics"],
        ),
        (
            &[("GET", "/a"), ("GET", "/b"), ("GET", "/c"), ("GET", "/d")],
            &["GET /a", "GET /b", "GET /c", "GET /d"],
        ),
        // Three names under /static: folded; the prefix itself is covered.
        (
            &[
                ("GET", "/static/a.css"),
                ("GET", "/static/b.js"),
                ("GET", "/static/c.png"),
                ("GET", "/static"),
            ],
            &["GET /static/*"],
        ),
        // Methods are folded apart; a lone sibling stays exact.
        (
            &[
                ("GET", "/api/items/1"),
                ("GET", "/api/items/2"),
                ("POST", "/api/items"),
                ("GET", "/api/status"),
            ],
            &["GET /api/items/*", "GET /api/status", "POST /api/items"],
        ),
        // Folding goes top down: /x has three children.
        (
            &[
                ("PUT", "/x/a/1"),
                ("PUT", "/x/a/2"),
                ("PUT", "/x/b"),
                ("PUT", "/x/c"),
            ],
            &["PUT /x/*"],
        ),
        // Trailing slashes and UUIDs.
        (
            &[
                ("DELETE", "/d/0b9f3c2e-9a4b-4c1d-8e2f-1234567890ab"),
                ("DELETE", "/d/1c9f3c2e-9a4b-4c1d-8e2f-1234567890ab"),
                ("GET", "/dir/"),
            ],
            &["DELETE /d/*", "GET /dir/"],
        ),
    ];

    #[test]
    fn observed_paths_fold_into_prefix_rules() {
        for (input, want) in CASES {
            let (rules, refused) = fold(&reqs(input), 3);
            assert_eq!(paths(&rules), *want, "{input:?}");
            assert!(refused.is_empty(), "{refused:?}");
            for r in &rules {
                assert!(HttpPath::parse(&r.path).is_ok(), "{r:?}");
                // Every observed request is allowed by the rules.
            }
            for (m, p) in *input {
                assert!(
                    rules
                        .iter()
                        .any(|r| r.method == *m && HttpPath::parse(&r.path).unwrap().matches(p)),
                    "{m} {p} not covered by {rules:?}"
                );
            }
        }
    }

    #[test]
    fn folds_list_what_they_stand_for() {
        let (rules, _) = fold(
            &reqs(&[("GET", "/r/1"), ("GET", "/r/2"), ("GET", "/r/3")]),
            3,
        );
        assert_eq!(rules[0].folded, ["/r/1", "/r/2", "/r/3"]);
        let (rules, _) = fold(&reqs(&[("GET", "/r/1")]), 3);
        assert!(rules[0].folded.is_empty());
    }

    #[test]
    fn truncated_deep_and_odd_paths() {
        let long = format!("/a/b/{}", "x".repeat(80));
        let deep = "/1a/2a/3a/4a/5a/6a/7a/8a/9a/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        let input: BTreeSet<(String, String, bool)> = [
            ("GET".to_string(), long[..64].to_string(), true),
            ("GET".to_string(), deep[..64].to_string(), true),
            ("GET".to_string(), "/x/../etc".to_string(), false),
            ("BREW".to_string(), "/pot".to_string(), false),
        ]
        .into_iter()
        .collect();
        let (rules, refused) = fold(&input, 3);
        assert_eq!(paths(&rules), ["GET /1a/2a/3a/4a/5a/6a/7a/*", "GET /a/b/*"]);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].contains("BREW"), "{refused:?}");
        assert!(refused[1].contains(".."), "{refused:?}");
    }

    #[test]
    fn identifiers_are_recognised() {
        for s in [
            "1",
            "123456",
            "deadbeef01",
            "0b9f3c2e-9a4b-4c1d-8e2f-1234567890ab",
        ] {
            assert!(id_like(s), "{s}");
        }
        for s in ["", "abc", "deadbeef", "v1", "readings"] {
            assert!(!id_like(s), "{s}");
        }
    }
}
