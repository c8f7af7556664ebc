//! `porin flows`: the latest flows from the daemon's history, optionally
//! followed as they come; a table by default, JSON lines with `-o json`
//! (the same objects as the flow log).

use std::{io::Write, process::ExitCode};

use super::status::{ask, fail, socket_path, table};
use crate::{
    cli::{FlowsArgs, OutputFormat},
    control::proto::{FlowFilter, Request, Response},
    flows::record::FlowView,
};

pub fn flows(args: &FlowsArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        let socket = socket_path(args.config.as_deref(), args.socket.as_deref())?;
        let req = Request::Flows {
            filter: FlowFilter {
                verdicts: args
                    .verdict
                    .iter()
                    .map(|v| v.to_ascii_uppercase())
                    .collect(),
                identities: args.identity.clone(),
            },
            last: args.last,
            follow: args.follow,
        };
        let (mut client, first) = ask(&socket, &req)?;
        let mut header = args.output == OutputFormat::Table;
        let mut out = std::io::stdout().lock();
        let mut reply = first;
        loop {
            match reply {
                Response::Flows(views) => {
                    let text = render(&views, args.output, header);
                    header = header && views.is_empty();
                    if out
                        .write_all(text.as_bytes())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        // stdout closed (e.g. `| head`): done.
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                other => return Err(fail(format!("unexpected reply {other:?}"))),
            }
            if !args.follow {
                if args.output == OutputFormat::Table {
                    print_http_counts(&mut client, &mut out);
                }
                return Ok(ExitCode::SUCCESS);
            }
            reply = client.next_reply().map_err(fail)?;
        }
    };
    run().unwrap_or_else(|c| c)
}

/// After the table: the HTTP requests each policy allowed, which the
/// kernel counts one by one (the table shows only the events). Silent when
/// there are none, or when the daemon is older and does not count them.
fn print_http_counts(client: &mut crate::control::client::Client, out: &mut impl Write) {
    let Ok(Response::HttpCounts(counts)) = client.call(&Request::HttpCounts) else {
        return;
    };
    if counts.is_empty() {
        return;
    }
    let mut rows = vec![vec![
        "POLICY".to_string(),
        "HTTP REQUESTS ALLOWED".to_string(),
    ]];
    rows.extend(
        counts
            .iter()
            .map(|c| vec![c.policy.clone(), c.allowed.to_string()]),
    );
    let _ = write!(out, "\n{}", table(&rows));
}

/// Flows as table rows (with the header when `header`) or JSON lines.
pub fn render(views: &[FlowView], format: OutputFormat, header: bool) -> String {
    match format {
        OutputFormat::Json => views
            .iter()
            .filter_map(|v| serde_json::to_string(v).ok())
            .map(|l| l + "\n")
            .collect(),
        OutputFormat::Table => {
            let mut rows = Vec::new();
            if header {
                rows.push(
                    [
                        "TIME",
                        "VERDICT",
                        "DIR",
                        "SOURCE",
                        "DESTINATION",
                        "PROTO",
                        "FLAGS",
                        "WHY",
                    ]
                    .map(String::from)
                    .to_vec(),
                );
            }
            for v in views {
                rows.push(row(v));
            }
            if rows.is_empty() {
                return String::new();
            }
            table(&rows)
        }
    }
}

fn side(p: &crate::flows::record::PeerView) -> String {
    let who = if p.container_name.is_empty() {
        p.identity_name.clone()
    } else {
        format!("{}[{}]", p.container_name, p.identity_name)
    };
    if p.port == 0 {
        format!("{who} {}", p.ip)
    } else if p.ip.contains(':') {
        format!("{who} [{}]:{}", p.ip, p.port)
    } else {
        format!("{who} {}:{}", p.ip, p.port)
    }
}

fn row(v: &FlowView) -> Vec<String> {
    // HH:MM:SS.mmm of the RFC 3339 time (UTC).
    let time = v.time.get(11..23).unwrap_or(&v.time).to_string();
    let mut why = match (&v.drop_reason_desc, v.policy.as_str()) {
        (Some(r), _) => r.clone(),
        (None, "") => "ground rule".into(),
        (None, p) => format!("policy {p}"),
    };
    // What an L7 verdict was about.
    if let Some(h) = &v.l7_http {
        why = format!("{why}: {} {}", h.method, h.url);
    }
    if let Some(m) = &v.l7_mqtt {
        let what = if m.client_id.is_empty() {
            &m.topic
        } else {
            &m.client_id
        };
        why = format!("{why}: {} {what}", m.packet_type);
    }
    vec![
        time,
        v.verdict.clone(),
        if v.traffic_direction == "EGRESS" {
            "egress".into()
        } else {
            "ingress".into()
        },
        side(&v.source),
        side(&v.destination),
        v.protocol.clone(),
        if v.tcp_flags.is_empty() {
            "-".into()
        } else {
            v.tcp_flags.join(",")
        },
        why,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::{
        tests::{directory, drop_event},
        FlowRecord,
    };

    #[test]
    fn flows_print_as_a_table_or_json_lines() {
        let v = FlowRecord::enrich(1, 1_700_000_000_123_456_789, drop_event(), &directory()).view();
        let t = render(std::slice::from_ref(&v), OutputFormat::Table, true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("TIME"), "{t}");
        assert!(
            lines[1].contains("22:13:20.123  DROPPED  egress  sensor-1[sensor] 10.88.0.2:40000  web 10.88.0.3:8080  TCP    SYN    POLICY_DENIED"),
            "{t}"
        );
        let j = render(&[v.clone(), v], OutputFormat::Json, true);
        assert_eq!(j.lines().count(), 2);
        let parsed: FlowView = serde_json::from_str(j.lines().next().unwrap()).unwrap();
        assert_eq!(parsed.destination.port, 8080);
        assert_eq!(render(&[], OutputFormat::Table, false), "");
    }
}
