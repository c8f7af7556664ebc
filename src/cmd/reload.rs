//! `porin reload`: asks the running daemon to re-read its configuration
//! file and prints the outcome; also the "last reload" lines of `porin
//! status`.
//!
//! Exit status: 0 when the new file is enforced, 1 when it is invalid
//! (nothing changed; its errors are printed as `porin check-config` prints
//! them), 2 when it could not be applied or the daemon could not be asked.

use std::{fmt::Write, process::ExitCode, time::Duration};

use super::{
    status::{fail, socket_path},
    EXIT_CONFIG, EXIT_RUNTIME,
};
use crate::{
    cli::ReloadArgs,
    control::{
        client::Client,
        proto::{ReloadOutcome, ReloadResult, Request, Response},
    },
    flows::record::rfc3339,
    reload::APPLY_WAIT,
};

pub fn reload(args: &ReloadArgs) -> ExitCode {
    let socket = match socket_path(args.config.as_deref(), args.socket.as_deref()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut client = match Client::connect(&socket) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // The daemon answers once the policy is enforced (or after APPLY_WAIT).
    client.set_reply_timeout(APPLY_WAIT + Duration::from_secs(10));
    let outcome = match client.call(&Request::Reload) {
        Ok(Response::Reload(o)) => o,
        Ok(other) => return fail(format!("unexpected reply {other:?}")),
        Err(e) => return fail(e),
    };
    match outcome.result {
        ReloadResult::Applied => {
            println!("{}", summary(&outcome));
            ExitCode::SUCCESS
        }
        ReloadResult::Invalid => {
            eprintln!("porin: {}", summary(&outcome));
            eprintln!("{}", outcome.errors.trim_end());
            ExitCode::from(EXIT_CONFIG)
        }
        ReloadResult::Failed | ReloadResult::Pending => {
            eprintln!("porin: {}", summary(&outcome));
            eprintln!("{}", outcome.errors.trim_end());
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// One line: what happened to the reload (without the error lines).
pub fn summary(o: &ReloadOutcome) -> String {
    match o.result {
        ReloadResult::Applied => format!(
            "reload applied: {} enforced as policy generation {} (datapath slot {}), {} connection{} revoked, in {:.1} ms",
            o.config_file,
            o.policy_generation,
            o.datapath_slot,
            o.revoked,
            if o.revoked == 1 { "" } else { "s" },
            o.enforced_us as f64 / 1e3
        ),
        ReloadResult::Invalid => format!(
            "reload refused: {} is invalid; policy generation {} stays in force",
            o.config_file, o.policy_generation
        ),
        ReloadResult::Failed => format!(
            "reload failed: {} is valid but was not applied; policy generation {} stays in force",
            o.config_file, o.policy_generation
        ),
        ReloadResult::Pending => format!(
            "reload pending: {} is valid and still being applied",
            o.config_file
        ),
    }
}

/// `porin status`'s "last reload" lines.
pub fn status_lines(o: Option<&ReloadOutcome>) -> String {
    let Some(o) = o else {
        return "last reload: none since start\n".into();
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "last reload: {} at {} ({}): {}",
        match o.result {
            ReloadResult::Applied => "OK",
            ReloadResult::Invalid => "INVALID FILE",
            ReloadResult::Failed => "FAILED",
            ReloadResult::Pending => "PENDING",
        },
        rfc3339(o.requested_unix_ns),
        o.trigger,
        summary(o)
    );
    for line in o.errors.lines() {
        let _ = writeln!(s, "  {line}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(result: ReloadResult) -> ReloadOutcome {
        ReloadOutcome {
            result,
            trigger: "porin reload".into(),
            config_file: "/etc/porin/porin.yaml".into(),
            requested_unix_ns: 1_764_137_000_000_000_000,
            policy_generation: 7,
            datapath_slot: 1,
            enforced_us: 3_250,
            errors: String::new(),
            revoked: 0,
        }
    }

    #[test]
    fn status_lines_say_what_happened() {
        assert_eq!(status_lines(None), "last reload: none since start\n");
        let ok = status_lines(Some(&outcome(ReloadResult::Applied)));
        assert_eq!(
            ok,
            "last reload: OK at 2025-11-26T06:03:20.000000000Z (porin reload): reload applied: \
             /etc/porin/porin.yaml enforced as policy generation 7 (datapath slot 1), \
             0 connections revoked, in 3.2 ms\n"
        );
        let one = summary(&ReloadOutcome {
            revoked: 1,
            ..outcome(ReloadResult::Applied)
        });
        assert!(one.contains(", 1 connection revoked, in 3.2 ms"), "{one}");
        let bad = ReloadOutcome {
            errors: "/etc/porin/porin.yaml:3:9: enforcement.mode: unknown value `x`\n\
                     /etc/porin/porin.yaml:6:13: networks[0].cidrs[0]: bad prefix"
                .into(),
            ..outcome(ReloadResult::Invalid)
        };
        let t = status_lines(Some(&bad));
        assert!(t.starts_with("last reload: INVALID FILE at "), "{t}");
        assert!(t.contains("policy generation 7 stays in force"), "{t}");
        assert!(
            t.contains("\n  /etc/porin/porin.yaml:3:9: enforcement.mode")
                && t.contains("\n  /etc/porin/porin.yaml:6:13: networks[0]"),
            "{t}"
        );
    }
}
