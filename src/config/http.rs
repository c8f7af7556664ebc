//! Syntax of the HTTP parts of a policy: methods, paths, Host and headers.
//!
//! The rules are strict on purpose: the datapath compares bytes, so anything
//! a server would normalise differently (dot segments, `//`, case) would make
//! a rule either never match or match less than the author believes.

use std::fmt;

/// Longest path, Host or header value accepted (bytes); bounds the datapath's
/// fixed-size match buffers.
pub const MAX_HTTP_TEXT: usize = 128;
/// Most header conditions in one HTTP rule.
pub const MAX_HEADERS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `*`: any method.
    Any,
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
}

const METHODS: [(&str, Method); 10] = [
    ("*", Method::Any),
    ("GET", Method::Get),
    ("HEAD", Method::Head),
    ("POST", Method::Post),
    ("PUT", Method::Put),
    ("DELETE", Method::Delete),
    ("PATCH", Method::Patch),
    ("OPTIONS", Method::Options),
    ("CONNECT", Method::Connect),
    ("TRACE", Method::Trace),
];

impl Method {
    /// Methods are case-sensitive in HTTP (RFC 9110 §9.1), so `get` is not GET.
    pub fn parse(text: &str) -> Result<Method, String> {
        if let Some((_, m)) = METHODS.iter().find(|(name, _)| *name == text) {
            return Ok(*m);
        }
        let names: Vec<&str> = METHODS.iter().map(|(n, _)| *n).collect();
        let hint = if METHODS.iter().any(|(n, _)| n.eq_ignore_ascii_case(text)) {
            format!(
                " (methods are case-sensitive: write `{}`)",
                text.to_ascii_uppercase()
            )
        } else {
            String::new()
        };
        Err(format!(
            "unknown HTTP method `{text}`{hint}; expected one of: {}",
            names.join(", ")
        ))
    }

    pub fn as_str(&self) -> &'static str {
        METHODS
            .iter()
            .find(|(_, m)| m == self)
            .map_or("*", |(n, _)| *n)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request-path pattern (the path without query string).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HttpPath {
    /// Matches exactly this path.
    Exact(String),
    /// Written `PREFIX/*`: matches `PREFIX` itself and every path below
    /// `PREFIX/`. Stored without the `/*`; `/*` alone is the empty prefix
    /// and matches every path.
    Prefix(String),
}

impl HttpPath {
    pub fn parse(text: &str) -> Result<HttpPath, String> {
        if text.len() > MAX_HTTP_TEXT {
            return Err(format!(
                "path is {} bytes long; at most {MAX_HTTP_TEXT} are allowed",
                text.len()
            ));
        }
        if !text.starts_with('/') {
            return Err(format!("path `{text}` must start with `/`"));
        }
        let (body, prefix) = match text.strip_suffix("/*") {
            Some(body) => (body, true),
            None => (text, false),
        };
        if prefix && body.ends_with('/') {
            return Err(format!("path `{text}` ends in `//*`; write `{body}*`"));
        }
        check_path_chars(body)?;
        // Segments between slashes; the first is the empty one before the
        // leading '/'. A trailing '/' (exact match on "/dir/") is allowed.
        let segments: Vec<&str> = body.split('/').skip(1).collect();
        for (i, seg) in segments.iter().enumerate() {
            match *seg {
                "." | ".." => {
                    return Err(format!(
                        "path `{text}` contains a `{seg}` segment; servers resolve dot \
                         segments, so write the resolved path"
                    ))
                }
                "" if i + 1 < segments.len() => {
                    return Err(format!(
                        "path `{text}` contains `//`; servers often merge slashes, so \
                         write a single `/`"
                    ))
                }
                _ => {}
            }
        }
        if prefix {
            Ok(HttpPath::Prefix(body.to_owned()))
        } else {
            Ok(HttpPath::Exact(body.to_owned()))
        }
    }

    /// Whether a request path (query string already removed) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            HttpPath::Exact(p) => path == p,
            HttpPath::Prefix(p) => match path.strip_prefix(p.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
        }
    }
}

impl fmt::Display for HttpPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpPath::Exact(p) => f.write_str(p),
            HttpPath::Prefix(p) => write!(f, "{p}/*"),
        }
    }
}

/// RFC 3986 `path-abempty`: pchar / "/", where pchar = unreserved /
/// pct-encoded / sub-delims / ":" / "@". `*` (a sub-delim) is kept out
/// so that a wildcard can never be mistaken for a literal.
fn check_path_chars(path: &str) -> Result<(), String> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(format!(
                        "path `{path}` has a `%` not followed by two hex digits"
                    ));
                }
                i += 3;
                continue;
            }
            b'?' | b'#' => {
                return Err(format!(
                    "path `{path}` contains `{}`; query strings and fragments are not matched",
                    b as char
                ))
            }
            b'*' => {
                return Err(format!(
                    "path `{path}` contains `*`; a wildcard is only allowed as a final `/*`"
                ))
            }
            b if b.is_ascii_whitespace() => {
                return Err(format!("path `{path}` contains whitespace"))
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()+,;=:@/".contains(&b) => {}
            _ => {
                let c = path[i..].chars().next().unwrap_or('?');
                return Err(format!(
                    "path `{path}` contains `{c}`, which is not allowed in a URI path \
                     (percent-encode it)"
                ));
            }
        }
        i += 1;
    }
    Ok(())
}

/// A header condition: presence only, or an exact value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderMatch {
    /// Lowercase: header names are case-insensitive.
    pub name: String,
    /// `None`: the header only has to be present.
    pub value: Option<String>,
}

/// RFC 9110 `token` characters, the syntax of a header name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub fn parse_header_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("header name must not be empty".into());
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii() || !is_tchar(*c as u8)) {
        return Err(format!(
            "header name `{text}` contains `{bad}`; only RFC 9110 token characters are allowed"
        ));
    }
    if text.eq_ignore_ascii_case("host") {
        return Err("match the Host header with the rule's `host` field".into());
    }
    Ok(text.to_ascii_lowercase())
}

pub fn parse_header_value(text: &str) -> Result<String, String> {
    if text.len() > MAX_HTTP_TEXT {
        return Err(format!(
            "header value is {} bytes long; at most {MAX_HTTP_TEXT} are allowed",
            text.len()
        ));
    }
    if let Some(bad) = text.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "header value contains {bad:?}; only printable ASCII is allowed"
        ));
    }
    Ok(text.to_owned())
}

/// `hostname[:port]` or `[ipv6][:port]`, lowercase as browsers and most
/// clients send it.
pub fn parse_host(text: &str) -> Result<String, String> {
    if text.len() > MAX_HTTP_TEXT {
        return Err(format!(
            "host is {} bytes long; at most {MAX_HTTP_TEXT} are allowed",
            text.len()
        ));
    }
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "host `{text}` must be lowercase (write `{}`)",
            text.to_ascii_lowercase()
        ));
    }
    let (name, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("host `{text}` has `[` without `]`"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("host `{text}`: `{v6}` is not an IPv6 address"));
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("host `{text}` has text after `]`")),
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(text), None),
        }
    };
    if let Some(name) = name {
        check_hostname(name).map_err(|why| format!("host `{text}`: {why}"))?;
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !ok {
            return Err(format!("host `{text}` has an invalid port `{port}`"));
        }
    }
    Ok(text.to_owned())
}

/// RFC 1123 host names: dot-separated labels of letters, digits and `-`.
fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("the name must be 1-253 characters long".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("every dot-separated label must be 1-63 characters long".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with `-`"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!("`{bad}` is not allowed in a host name"));
        }
    }
    Ok(())
}
