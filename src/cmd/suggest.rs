//! `porin policy suggest` and `porin policy whatif`: read the recorded
//! flows (the daemon's history through the control socket plus its
//! configured flow log, or the `--log` files given), hand them to
//! [`crate::suggest`], print the result.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    load_checked,
    status::{fail, table},
    EXIT_CONFIG,
};
use crate::{
    cli::{SuggestArgs, WhatifArgs, DEFAULT_CONFIG},
    config::{self, Config},
    control::{
        client::Client,
        proto::{FlowFilter, Request, Response},
    },
    flows::record::FlowView,
    suggest::{emit, observe, whatif},
};

pub fn suggest(args: &SuggestArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        if args.output != "yaml" {
            return Err(fail(format!(
                "unknown output format `{}`; expected yaml",
                args.output
            )));
        }
        let since = since_ns(args.since.as_deref())?;
        let base = base_config(args.config.as_deref())?;
        let (views, source) = gather(
            base.as_ref().map(|b| &b.2),
            args.socket.as_deref(),
            &args.log,
        )?;
        let obs = observe::observe(&views, since);
        if obs.flows.is_empty() {
            eprintln!(
                "porin: warning: none of the {} records ({source}) is a connection start \
                 or request: the suggestion allows nothing",
                obs.records
            );
        }
        let text = emit::suggest(
            &obs,
            &emit::Base {
                file: base
                    .as_ref()
                    .map(|(name, text, cfg)| (name.as_str(), text.as_str(), cfg)),
                source: &source,
                fold_min: args.fold,
            },
        );
        // The suggestion must pass the checks `porin check-config` makes.
        let checked = config::parse(&text, "<suggestion>")
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                crate::policy::compile(&cfg, &[], &[], &crate::policy::http::ANY_KEY)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = checked {
            eprintln!("{text}");
            return Err(fail(format!(
                "the suggestion is not a valid configuration (a bug; the text is above):\n{e}"
            )));
        }
        print!("{text}");
        Ok(ExitCode::SUCCESS)
    };
    run().unwrap_or_else(|c| c)
}

pub fn whatif(args: &WhatifArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        let since = since_ns(args.since.as_deref())?;
        let candidate = load_checked(&args.file).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        })?;
        for g in candidate
            .groups
            .iter()
            .filter(|g| !g.select.annotations.is_empty())
        {
            // Flow records carry labels, not annotations: such a group
            // selects none of the replayed containers.
            eprintln!(
                "porin: warning: group {} selects by annotations, which the recorded flows \
                 do not carry: whatif treats it as selecting no container",
                g.name
            );
        }
        let base = base_config(args.config.as_deref())?;
        let (views, source) = gather(
            base.as_ref().map(|b| &b.2),
            args.socket.as_deref(),
            &args.log,
        )?;
        let obs = observe::observe(&views, since);
        let report = whatif::replay(&candidate, &obs).map_err(|e| {
            eprintln!("{}: {e}", args.file.display());
            ExitCode::from(EXIT_CONFIG)
        })?;
        print!("{}", render(&args.file, &obs, &source, &report));
        Ok(if report.drops() == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    };
    run().unwrap_or_else(|c| c)
}

fn render(file: &Path, obs: &observe::Observed, source: &str, r: &whatif::Report) -> String {
    let mut out = format!(
        "{}: {} connection starts and requests judged, from {} records ({source}), {} to {}\n",
        file.display(),
        r.judged,
        obs.records,
        obs.first.as_deref().unwrap_or("-"),
        obs.last.as_deref().unwrap_or("-"),
    );
    out.push_str(&format!(
        "passed: {}; would be dropped: {}; denied but passed by audit mode: {}\n",
        r.passed,
        r.drops(),
        r.audited.values().map(|(n, _)| n).sum::<usize>()
    ));
    if r.unjudged_http > 0 {
        out.push_str(&format!(
            "{} connections allowed onto HTTP-ruled ports had no request recorded: their \
             requests were not judged\n",
            r.unjudged_http
        ));
    }
    for (title, groups) in [("WOULD BE DROPPED", &r.dropped), ("AUDITED", &r.audited)] {
        if groups.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{title}\n"));
        let mut rows = vec![["FROM", "TO", "PORT", "REASON", "COUNT", "FIRST SEEN"]
            .map(String::from)
            .to_vec()];
        for ((from, to, port, reason), (n, example)) in groups {
            rows.push(vec![
                from.clone(),
                to.clone(),
                port.clone(),
                reason.to_string(),
                n.to_string(),
                example.clone(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// `--since` as nanoseconds since the epoch.
fn since_ns(since: Option<&str>) -> Result<Option<u64>, ExitCode> {
    let Some(text) = since else {
        return Ok(None);
    };
    let d = config::parse_duration(text).map_err(|e| fail(format!("--since: {e}")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(fail)?
        .as_nanos();
    Ok(Some(
        u64::try_from(now.saturating_sub(d.as_nanos())).unwrap_or(0),
    ))
}

/// The file given, else the default file if it exists: its name, text and
/// checked contents.
fn base_config(path: Option<&Path>) -> Result<Option<(String, String, Config)>, ExitCode> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
        None => return Ok(None),
    };
    let cfg = load_checked(&path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let text =
        std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    Ok(Some((path.display().to_string(), text, cfg)))
}

/// The records: the `logs` given; else the daemon's history and the
/// flow log `cfg` configures (deduplicated). Also says where they came
/// from.
fn gather(
    cfg: Option<&Config>,
    socket: Option<&Path>,
    logs: &[PathBuf],
) -> Result<(Vec<FlowView>, String), ExitCode> {
    if !logs.is_empty() {
        let mut views = Vec::new();
        for l in logs {
            views.extend(read_log(l).map_err(fail)?);
        }
        let names: Vec<String> = logs.iter().map(|l| l.display().to_string()).collect();
        return Ok((views, names.join(", ")));
    }
    let defaults;
    let cfg = match cfg {
        Some(c) => c,
        None => {
            defaults = config::parse("version: 1\n", "<built-in defaults>")
                .expect("the defaults are valid");
            &defaults
        }
    };
    let socket = socket.map_or_else(|| cfg.control.socket.clone(), Path::to_path_buf);
    let mut views = Vec::new();
    let mut sources = Vec::new();
    let daemon = ask_history(&socket);
    match &daemon {
        Ok(v) => {
            sources.push(format!("{} from the daemon's history", v.len()));
            views.extend(v.iter().cloned());
        }
        Err(e) => eprintln!("porin: warning: the daemon's history: {e}"),
    }
    if let Some(log) = &cfg.flows.log {
        let mut files: Vec<PathBuf> = (1..=log.keep)
            .rev()
            .map(|n| {
                let mut s = log.path.clone().into_os_string();
                s.push(format!(".{n}"));
                PathBuf::from(s)
            })
            .collect();
        files.push(log.path.clone());
        for f in files.iter().filter(|f| f.exists()) {
            let v = read_log(f).map_err(fail)?;
            sources.push(format!("{} from {}", v.len(), f.display()));
            views.extend(v);
        }
    }
    if sources.is_empty() {
        return Err(fail(format!(
            "no flow records: the daemon at {} did not answer and no flow log was found \
             (flows.log in the configuration); give files with --log",
            socket.display()
        )));
    }
    // The history and the log hold the same records.
    let mut seen = HashSet::new();
    views.retain(|v| seen.insert(serde_json::to_string(v).unwrap_or_default()));
    Ok((views, sources.join(", ")))
}

fn ask_history(socket: &Path) -> Result<Vec<FlowView>, String> {
    let mut c = Client::connect(socket).map_err(|e| e.to_string())?;
    let req = Request::Flows {
        filter: FlowFilter::default(),
        last: u32::MAX,
        follow: false,
    };
    match c.call(&req).map_err(|e| e.to_string())? {
        Response::Flows(v) => Ok(v),
        Response::Error(e) => Err(e.message),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// A JSON-lines flow log; an unreadable line is an error naming the file,
/// line and column.
pub fn read_log(path: &Path) -> Result<Vec<FlowView>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: FlowView = serde_json::from_str(&line).map_err(|e| {
            format!(
                "{}:{}:{}: not a flow record: {e}",
                path.display(),
                i + 1,
                e.column()
            )
        })?;
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatif_prints_counts_and_a_table_per_outcome() {
        let mut r = whatif::Report {
            judged: 4,
            passed: 2,
            unjudged_http: 1,
            ..Default::default()
        };
        r.dropped.insert(
            (
                "group web".into(),
                "group db".into(),
                "tcp/5432".into(),
                "POLICY_DENIED",
            ),
            (2, "web-1 10.88.0.6:41012 -> db-1 10.88.0.7:5432".into()),
        );
        let obs = observe::Observed {
            records: 9,
            ..Default::default()
        };
        let t = render(Path::new("c.yaml"), &obs, "flows.jsonl", &r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "c.yaml: 4 connection starts and requests judged, from 9 records (flows.jsonl), - to -"
        );
        assert_eq!(
            lines[1],
            "passed: 2; would be dropped: 2; denied but passed by audit mode: 0"
        );
        assert!(lines[2].starts_with("1 connections allowed onto HTTP-ruled ports"));
        assert_eq!(lines[4], "WOULD BE DROPPED");
        assert!(
            lines[5].starts_with("FROM       TO        PORT      REASON"),
            "{t}"
        );
        assert!(
            lines[6].starts_with("group web  group db  tcp/5432  POLICY_DENIED  2      web-1"),
            "{t}"
        );
        assert!(!t.contains("AUDITED"), "{t}");
    }

    #[test]
    fn a_bad_log_line_is_named_by_file_line_and_column() {
        let dir = std::env::temp_dir().join(format!("porin-suggest-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("flows.jsonl");
        let good = serde_json::to_string(&FlowView::default()).unwrap();
        std::fs::write(&f, format!("{good}\n\n{good}\n{{\"time\": 5}}\n")).unwrap();
        let e = read_log(&f).unwrap_err();
        assert!(
            e.starts_with(&format!("{}:4:", f.display())) && e.contains("not a flow record"),
            "{e}"
        );
        std::fs::write(&f, format!("{good}\n{good}\n")).unwrap();
        assert_eq!(read_log(&f).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).ok();
    }
}
