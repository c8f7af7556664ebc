//! `porin run`: the daemon.
//!
//! Today it validates the config, probes the kernel, self-tests the
//! datapath programs, and runs live discovery, logging a status line as
//! endpoints come and go. Enforcement attaches here with its issue.

use std::{path::Path, process::ExitCode, sync::mpsc, thread};

use log::{error, info, warn};

use super::{EXIT_CONFIG, EXIT_RUNTIME};
use crate::{
    config,
    discovery::{
        endpoint::Endpoint, inventory::Event, live::LiveDiscovery, scanner::Scanner, watch::Watcher,
    },
    kernel::KernelFeatures,
    logging, selftest,
    signals::{Signal, SignalSet},
    VERSION,
};

pub fn run(path: &Path) -> ExitCode {
    // Block the stop/reload signals before any thread exists, so every
    // thread inherits the mask and only `sigwait` below takes them.
    let signals = match SignalSet::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("porin: cannot block signals: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(cfg.log_level());
    info!(
        "porin {VERSION} starting with {} ({})",
        path.display(),
        cfg.summary()
    );
    for line in KernelFeatures::probe().to_string().lines() {
        info!("{line}");
    }
    if let Err(e) = selftest::run() {
        error!("datapath self-test failed, not starting: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    info!("datapath self-test passed: the kernel accepted and ran porin's programs");
    warn!("policy enforcement is not implemented yet in this build: no traffic is filtered");

    let scanner = match Scanner::new(&cfg.discovery) {
        Ok(s) => s,
        Err(e) => {
            error!("container discovery cannot start: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    info!(
        "discovery: {:?} cgroups, scanning {}",
        scanner.cgroups().layout(),
        scanner.cgroups().dir().display()
    );
    let (watcher, stopper) = match Watcher::new() {
        Ok(w) => w,
        Err(e) => {
            error!("inotify unavailable, discovery cannot start: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let (tx, rx) = mpsc::channel();
    let resync = cfg.discovery.resync_interval;
    let discovery = thread::Builder::new()
        .name("discovery".into())
        .spawn(move || LiveDiscovery::new(scanner).run(watcher, resync, tx))
        .expect("spawn discovery thread");
    let reporter = thread::Builder::new()
        .name("endpoint-log".into())
        .spawn(move || log_events(rx))
        .expect("spawn reporter thread");

    info!(
        "ready; SIGHUP re-validates {}, SIGTERM or SIGINT stops",
        path.display()
    );
    let status = loop {
        match signals.wait() {
            Ok(Signal::Stop(sig)) => {
                info!("signal {sig}: stopping");
                break ExitCode::SUCCESS;
            }
            Ok(Signal::Reload) => match config::load(path) {
                Ok(new) => info!("reload: {} is valid ({})", path.display(), new.summary()),
                Err(errors) => error!(
                    "reload: {} is invalid, keeping the running config:\n{errors}",
                    path.display()
                ),
            },
            Err(e) => {
                error!("waiting for signals failed: {e}");
                break ExitCode::from(EXIT_RUNTIME);
            }
        }
    };
    stopper.stop();
    let _ = discovery.join();
    let _ = reporter.join();
    status
}

/// One line per endpoint change, plus the running count.
fn log_events(rx: mpsc::Receiver<Event>) {
    let mut count: usize = 0;
    for ev in rx {
        match &ev {
            Event::Added(e) => {
                count += 1;
                info!("endpoint +{} [{count} endpoints]", describe(e));
            }
            Event::Updated { new, .. } => info!("endpoint ~{} [{count} endpoints]", describe(new)),
            Event::Removed(e) => {
                count = count.saturating_sub(1);
                info!("endpoint -{} [{count} endpoints]", describe(e));
            }
        }
    }
}

fn describe(e: &Endpoint) -> String {
    let addrs: Vec<String> = e
        .addresses()
        .map(|a| a.to_string())
        .filter(|a| !a.starts_with("fe80:"))
        .collect();
    let veth: Vec<&str> = e.host_veths().map(|p| p.name.as_str()).collect();
    format!(
        "{} {} ({}) {} {}",
        e.key,
        e.name,
        if e.image.is_empty() { "-" } else { &e.image },
        if e.host_network {
            "host-network".to_string()
        } else {
            addrs.join(",")
        },
        if veth.is_empty() {
            String::new()
        } else {
            format!("via {}", veth.join(","))
        },
    )
}
