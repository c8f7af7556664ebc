//! Random HTTP requests and rule sets for the parser's property tests and
//! the kernel/host differential test. Small alphabets on purpose, so paths,
//! prefixes, hosts and headers of requests and rules often coincide.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::BTreeMap;

use porin::config::{HeaderMatch, HttpPath, HttpRule, Loc, Method};
use porin::policy::http::{compile_rules, reference_allows};
use porin_common::http::{method, HttpKey, HttpSet, HttpValue};
use proptest::prelude::*;

const SEGMENTS: &[&str] = &["a", "b", "api", "v1", "metrics", "admin", "x.y", "%41"];
const HOSTS: &[&str] = &["web.local", "WEB.Local", "other", "web.local:8080"];
const NAMES: &[&str] = &[
    "X-Key",
    "content-type",
    "Accept",
    "x-other",
    "Cookie",
    "authorization",
];
const VALUES: &[&str] = &["1", "json", "a b", "application/json"];

/// A request to render.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub content_length: Option<u32>,
    /// Spaces after each `:`.
    pub ows: usize,
}

impl Req {
    pub fn render(&self) -> Vec<u8> {
        let mut s = format!(
            "{} {}{} HTTP/1.1\r\n",
            self.method,
            self.path,
            self.query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        );
        let sp = " ".repeat(self.ows);
        if let Some(h) = &self.host {
            s.push_str(&format!("Host:{sp}{h}\r\n"));
        }
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}:{sp}{v}{sp}\r\n"));
        }
        if let Some(cl) = self.content_length {
            s.push_str(&format!("Content-Length: {cl}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    /// `porin_common::http::method` index of the method.
    pub fn method_index(&self) -> u8 {
        method::NAMES[1..10]
            .iter()
            .position(|n| *n == self.method)
            .map_or(method::OTHER, |i| i as u8 + 1)
    }

    /// What the configuration's own matching says.
    pub fn reference(&self, rules: &[HttpRule]) -> bool {
        reference_allows(
            rules,
            self.method_index(),
            &self.path,
            self.host.as_deref(),
            &self.headers,
        )
    }
}

fn pick(list: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(list).prop_map(str::to_owned)
}

pub fn path() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(pick(SEGMENTS), 0..5),
        any::<bool>(),
    )
        .prop_map(|(segs, slash)| {
            let mut p = format!("/{}", segs.join("/"));
            if slash && !segs.is_empty() {
                p.push('/');
            }
            p
        })
}

/// A value as long as a cookie or a token: past the point where the
/// parser hands a value it does not keep to `skip_value`, blanks inside,
/// none at the ends.
fn long_value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9+/=;.][A-Za-z0-9+/=;. ]{62,400}[A-Za-z0-9]"
}

pub fn request() -> impl Strategy<Value = Req> {
    (
        prop_oneof![
            4 => proptest::sample::select(&method::NAMES[1..10]).prop_map(str::to_owned),
            1 => "[A-Z]{1,8}",
        ],
        path(),
        proptest::option::of("[a-z0-9=&]{0,8}"),
        proptest::option::of(pick(HOSTS)),
        proptest::collection::vec(
            (
                pick(NAMES),
                prop_oneof![3 => pick(VALUES), 1 => long_value()],
            ),
            0..4,
        ),
        proptest::option::of(0u32..100_000),
        0usize..3,
    )
        .prop_map(
            |(method, path, query, host, headers, content_length, ows)| Req {
                method,
                path,
                query,
                host,
                headers,
                content_length,
                ows,
            },
        )
}

fn rule() -> impl Strategy<Value = HttpRule> {
    (
        proptest::sample::select(vec![Method::Get, Method::Post, Method::Any]),
        path(),
        any::<bool>(),
        proptest::option::of(Just("web.local".to_owned())),
        proptest::collection::vec((pick(NAMES), proptest::option::of(pick(VALUES))), 0..3),
    )
        .prop_map(|(method, p, prefix, host, headers)| {
            let text = if prefix {
                format!("{}/*", p.trim_end_matches('/'))
            } else {
                p
            };
            let mut seen = Vec::new();
            let headers = headers
                .into_iter()
                .filter(|(n, _)| {
                    let l = n.to_ascii_lowercase();
                    let new = !seen.contains(&l);
                    seen.push(l);
                    new
                })
                .map(|(n, value)| HeaderMatch {
                    name: n.to_ascii_lowercase(),
                    value,
                })
                .collect();
            HttpRule {
                method,
                path: HttpPath::parse(&text).expect("generated paths are valid"),
                host,
                headers,
                loc: Loc { line: 1, column: 1 },
            }
        })
}

/// 1-4 rules (one policy).
pub fn rules() -> impl Strategy<Value = Vec<HttpRule>> {
    proptest::collection::vec(rule(), 1..5)
}

/// Compiles `rules` as policy 1's under `key`; `None` when they exceed a
/// datapath limit.
pub fn compile(
    key: &porin_common::sip::SipKey,
    rules: &[HttpRule],
) -> Option<(HttpSet, BTreeMap<HttpKey, HttpValue>)> {
    let mut map = BTreeMap::new();
    let set = compile_rules(key, b"test", &[(1, "p", rules)], &mut map).ok()?;
    Some((set, map))
}
