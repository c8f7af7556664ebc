//! `porin status` and `porin policy`: ask the running daemon and print the
//! answer as a table (default) or JSON.

use std::{fmt::Write, path::Path, process::ExitCode};

use super::{config_or_defaults, EXIT_CONFIG, EXIT_RUNTIME};
use crate::{
    cli::{OutputFormat, PolicyArgs, StatusArgs},
    control::{
        client::Client,
        proto::{PolicyDump, Request, Response, Status},
    },
};

/// The control socket: `--socket`, else the config's `control.socket`.
pub fn socket_path(
    config: Option<&Path>,
    socket: Option<&Path>,
) -> Result<std::path::PathBuf, ExitCode> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    match config_or_defaults(config) {
        Ok(cfg) => Ok(cfg.control.socket),
        Err(errors) => {
            eprintln!("{errors}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// Connects and sends one request; prints the error and returns the exit
/// code on failure.
pub fn ask(socket: &Path, req: &Request) -> Result<(Client, Response), ExitCode> {
    let mut c = Client::connect(socket).map_err(fail)?;
    let r = c.call(req).map_err(fail)?;
    Ok((c, r))
}

pub fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("porin: {e}");
    ExitCode::from(EXIT_RUNTIME)
}

pub fn print_json(v: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot encode JSON: {e}")),
    }
}

pub fn status(args: &StatusArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        let socket = socket_path(args.config.as_deref(), args.socket.as_deref())?;
        match ask(&socket, &Request::Status)?.1 {
            Response::Status(s) => Ok(match args.output {
                OutputFormat::Json => print_json(&s),
                OutputFormat::Table => {
                    print!("{}", status_text(&s));
                    ExitCode::SUCCESS
                }
            }),
            other => Err(fail(format!("unexpected reply {other:?}"))),
        }
    };
    run().unwrap_or_else(|c| c)
}

pub fn policy(args: &PolicyArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        let socket = socket_path(args.config.as_deref(), args.socket.as_deref())?;
        match ask(&socket, &Request::Policy)?.1 {
            Response::Policy(p) => Ok(match args.output {
                OutputFormat::Json => print_json(&p),
                OutputFormat::Table => {
                    print!("{}", policy_text(&p));
                    ExitCode::SUCCESS
                }
            }),
            other => Err(fail(format!("unexpected reply {other:?}"))),
        }
    };
    run().unwrap_or_else(|c| c)
}

/// Columns padded to their widest cell.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn uptime(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

pub fn status_text(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "porin {}, up {}, config {}",
        s.version,
        uptime(s.uptime_s),
        s.config_file
    );
    let _ = writeln!(
        o,
        "policy generation {} (datapath slot {}), {} endpoints, {} attached veths{}",
        s.policy_generation,
        s.datapath_slot,
        s.endpoints.len(),
        s.attached.len(),
        if s.attach_failures.is_empty() {
            String::new()
        } else {
            format!(", FAILED to attach: {}", s.attach_failures.join(","))
        }
    );
    if !s.gate.is_empty() {
        let _ = writeln!(o, "gate: {}", s.gate);
    }
    let _ = writeln!(
        o,
        "flows: {} of {} in history, {} events lost",
        s.flows_in_history, s.history_capacity, s.events_lost
    );
    o.push_str(&super::reload::status_lines(s.last_reload.as_ref()));
    o.push_str("\nENDPOINTS\n");
    let mut rows = vec![[
        "NAME",
        "ID",
        "RUNTIME",
        "IDENTITY",
        "MODE",
        "ADDRESSES",
        "VETH",
    ]
    .map(String::from)
    .to_vec()];
    for e in &s.endpoints {
        rows.push(vec![
            e.name.clone(),
            e.id.clone(),
            e.runtime.clone(),
            if e.identity_name.is_empty() {
                format!("{:#010x}", e.identity)
            } else {
                format!("{} ({:#010x})", e.identity_name, e.identity)
            },
            e.mode.clone(),
            or_dash(e.addresses.join(",")),
            or_dash(e.veths.join(",")),
        ]);
    }
    o.push_str(&table(&rows));
    o.push_str("\nIDENTITIES\n");
    let mut rows = vec![vec!["IDENTITY".to_string(), "NAME".to_string()]];
    for (id, n) in &s.identities {
        rows.push(vec![format!("{id:#010x}"), n.clone()]);
    }
    o.push_str(&table(&rows));
    o.push_str("\nMAPS\n");
    let mut rows = vec![["MAP", "ENTRIES", "CAPACITY", "FILL"]
        .map(String::from)
        .to_vec()];
    for m in &s.maps {
        rows.push(vec![
            m.name.clone(),
            m.entries.to_string(),
            m.capacity.to_string(),
            format!(
                "{:.1}%",
                100.0 * m.entries as f64 / (m.capacity.max(1)) as f64
            ),
        ]);
    }
    o.push_str(&table(&rows));
    o.push_str(&conntrack_lines(&s.conntrack));
    o.push_str("\nKERNEL\n");
    let rows: Vec<Vec<String>> = s
        .kernel
        .iter()
        .map(|(k, v)| vec![format!("{k}:"), v.clone()])
        .collect();
    o.push_str(&table(&rows));
    if !s.warnings.is_empty() {
        o.push_str("\nWARNINGS\n");
        for w in &s.warnings {
            let _ = writeln!(o, "{w}");
        }
    }
    o
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

pub fn policy_text(p: &PolicyDump) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "policy generation {}: {}",
        p.policy_generation, p.summary
    );
    if p.explain.is_empty() {
        o.push_str("(no endpoints)\n");
    } else {
        o.push('\n');
        o.push_str(&p.explain);
    }
    o
}

/// The CONNTRACK section: the quotas, what they refused, the fullest
/// endpoints.
fn conntrack_lines(c: &crate::control::proto::ConntrackStatus) -> String {
    let quota = |n: u32, what: &str| {
        if n == 0 {
            "no limit".to_string()
        } else {
            format!("{n} {what}")
        }
    };
    let mut o = format!(
        "\nCONNTRACK\nper-endpoint quota: {}; packets of new flows refused by it: {}\n\
         HTTP quota: {}; packets of new HTTP-ruled connections refused by it: {}\n",
        quota(c.max_per_endpoint, "entries"),
        c.refused,
        quota(c.max_http_per_endpoint, "connections"),
        c.http_refused,
    );
    if !c.per_endpoint.is_empty() {
        let mut rows = vec![vec![
            "VETH".to_string(),
            "ENTRIES".to_string(),
            "HTTP".to_string(),
        ]];
        for e in c.per_endpoint.iter().take(10) {
            rows.push(vec![
                e.veth.clone(),
                e.entries.to_string(),
                e.http.to_string(),
            ]);
        }
        o.push_str(&table(&rows));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{EndpointStatus, MapFill};

    #[test]
    fn the_conntrack_section_shows_both_quotas_and_the_fullest_endpoints() {
        use crate::control::proto::{ConntrackStatus, EndpointConnections};
        let c = ConntrackStatus {
            max_per_endpoint: 8192,
            max_http_per_endpoint: 0,
            refused: 12,
            http_refused: 3,
            per_endpoint: vec![EndpointConnections {
                veth: "veth1".into(),
                entries: 40,
                http: 2,
            }],
        };
        let t = conntrack_lines(&c);
        assert!(
            t.contains(
                "per-endpoint quota: 8192 entries; packets of new flows refused by it: 12\n"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "HTTP quota: no limit; packets of new HTTP-ruled connections refused by it: 3\n"
            ),
            "{t}"
        );
        let row = t.lines().find(|l| l.starts_with("veth1")).expect("a row");
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["veth1", "40", "2"]
        );
    }

    #[test]
    fn the_status_table_lines_up() {
        let s = Status {
            version: "0.1.0".into(),
            uptime_s: 3725,
            policy_generation: 3,
            endpoints: vec![EndpointStatus {
                name: "sensor-1".into(),
                id: "3f0c1d2e4b5a".into(),
                runtime: "podman".into(),
                identity: 0x0100_0001,
                identity_name: "sensor".into(),
                mode: "enforce".into(),
                addresses: vec!["10.88.0.7".into()],
                veths: vec!["veth3".into()],
            }],
            maps: vec![MapFill {
                name: crate::maps::ENDPOINTS.name.into(),
                entries: 1,
                capacity: 4096,
            }],
            ..Default::default()
        };
        let t = status_text(&s);
        assert!(t.starts_with("porin 0.1.0, up 1h02m"), "{t}");
        assert!(t.contains("policy generation 3"), "{t}");
        assert!(t.contains("\nlast reload: none since start\n"), "{t}");
        assert!(
            t.contains(
                "sensor-1  3f0c1d2e4b5a  podman   sensor (0x01000001)  enforce  10.88.0.7  veth3"
            ),
            "{t}"
        );
        let row = format!("{}  1        4096      0.0%", crate::maps::ENDPOINTS.name);
        assert!(t.contains(&row), "{t}");
    }
}
