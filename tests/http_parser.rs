//! Property tests of the HTTP request parser and matcher
//! (`porin_common::http`) against the configuration's own matching
//! (`HttpPath::matches` and friends, `porin::policy::http::reference_allows`).
//! Case counts are bounded so CI stays fast; raise `PROPTEST_CASES` to
//! search longer.

mod http_gen;

use porin::policy::http::ANY_KEY as KEY;
use porin_common::http::{
    header_value_hash, host_condition, judge, parse, parse_for, path_hash, HttpError, Request,
    MAX_HEAD,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes and lengths: never a panic, and a result that only
    /// points inside what it was given.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), len in 0usize..500) {
        if let Ok(r) = parse(&bytes, len, &KEY) {
            let end = len.min(bytes.len());
            prop_assert!(r.head_len as usize <= end);
            prop_assert!((r.path_start + r.path_len) as usize <= end);
        }
    }

    /// Mostly-HTTP bytes with one corrupted byte: still no panic.
    #[test]
    fn corrupted_requests_never_panic(req in http_gen::request(), at in any::<usize>(), b in any::<u8>()) {
        let mut bytes = req.render();
        let i = at % bytes.len();
        bytes[i] = b;
        let _ = parse(&bytes, bytes.len(), &KEY);
    }

    /// parse(render(request)) gives back what was rendered.
    #[test]
    fn round_trip(req in http_gen::request()) {
        let bytes = req.render();
        prop_assume!(bytes.len() <= MAX_HEAD as usize);
        let r: Request = parse(&bytes, bytes.len(), &KEY).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(r.method, req.method_index());
        let path = &bytes[r.path_start as usize..(r.path_start + r.path_len) as usize];
        prop_assert_eq!(path, req.path.as_bytes());
        // The event's copy of the path: its first bytes, zero past them.
        let kept: Vec<u8> = r.path_bytes.iter().flat_map(|w| w.to_le_bytes()).collect();
        let n = path.len().min(kept.len());
        prop_assert_eq!(&kept[..n], &path[..n]);
        prop_assert!(kept[n..].iter().all(|b| *b == 0));
        prop_assert_eq!(r.path, path_hash(&KEY, req.path.as_bytes()));
        prop_assert_eq!(r.host, req.host.as_ref().map_or(0, |h| host_condition(&KEY, h.to_ascii_lowercase().as_bytes())));
        prop_assert_eq!(r.headers as usize, req.headers.len());
        for (i, (n, v)) in req.headers.iter().enumerate() {
            prop_assert_eq!(r.values[i], header_value_hash(&KEY, n.to_ascii_lowercase().as_bytes(), v.as_bytes()));
        }
        prop_assert_eq!(r.content_length, req.content_length.unwrap_or(0));
        prop_assert_eq!(r.head_len as usize, bytes.len());
        // A truncated head is not complete: `parse` says `Unsupported`
        // (the stream goes on in the next segment: `http_stream`).
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            prop_assert_eq!(parse(&bytes, cut, &KEY), Err(HttpError::Unsupported));
        }
    }

    /// The compiled maps and `judge` agree with the configuration's own
    /// matching (exact paths, prefixes on segment boundaries, methods,
    /// Host, header presence and values).
    #[test]
    fn compiled_rules_agree_with_the_reference(rules in http_gen::rules(), req in http_gen::request()) {
        let bytes = req.render();
        prop_assume!(bytes.len() <= MAX_HEAD as usize);
        // `%41` in a path is fine for both sides; nothing generated is
        // something the parser refuses.
        let Some((set, map)) = http_gen::compile(&KEY, &rules) else { return Ok(()); };
        // Parsed as the kernel parses for the set: only the prefix depths
        // and the headers (by the names' filter) its rules read.
        let r = parse_for(&bytes, bytes.len(), &KEY, set.depths, set.names)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let got = judge(&r, &set, |k| map.get(k)) != 0;
        prop_assert_eq!(got, req.reference(&rules), "{}", String::from_utf8_lossy(&bytes));
        // Keeping every header changes nothing.
        let all = parse(&bytes, bytes.len(), &KEY).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(judge(&all, &set, |k| map.get(k)) != 0, got);
    }
}
