//! `porin run`: the daemon.
//!
//! It validates the config, probes the kernel, self-tests the datapath
//! programs, loads the policy programs, and runs two threads: live discovery
//! and the enforcement loop, which compiles the policy for the endpoints
//! discovery reports and applies it (logging a status line as endpoints
//! come and go). SIGHUP and `porin reload` reload the configuration
//! ([`crate::reload`]): an invalid file changes nothing. A third thread
//! ([`super::io`]) serves the control socket and metrics and reads the flow
//! events.

use std::{
    path::Path,
    process::ExitCode,
    sync::{mpsc, Arc},
    thread,
    time::Instant,
};

use log::{error, info};

use super::{EXIT_CONFIG, EXIT_RUNTIME};
use crate::{
    datapath::{
        gate::{self, Gate},
        Datapath,
    },
    discovery::{
        live::{LiveDiscovery, ERROR_RETRY},
        ports,
        scanner::Scanner,
        watch::{Wake, Watcher},
    },
    ebpf,
    enforce::{Enforcer, Input},
    flows::maps::{CounterMaps, EventMaps},
    kernel::{EventsTransport, KernelFeatures},
    logging,
    reload::{Reloader, Trigger},
    selftest,
    signals::{Signal, SignalSet},
    state::Shared,
    VERSION,
};

use super::io::{self, IoSetup};

pub fn run(path: &Path) -> ExitCode {
    abort_on_panic();
    // Block the stop/reload signals before any thread exists, so every
    // thread inherits the mask and only `sigwait` below takes them.
    let signals = match SignalSet::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("porin: cannot block signals: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let cfg = match super::load_checked(path) {
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
    let features = KernelFeatures::probe();
    for line in features.to_string().lines() {
        info!("{line}");
    }
    // Before the self-test: every object loaded from here on is the one for
    // this transport.
    let transport = ebpf::set_transport(features.events_transport(cfg.flows.events_transport));
    info!(
        "flow events through a {transport}{}",
        if cfg.flows.events_transport.is_some() {
            " (flows.events_transport)"
        } else {
            ""
        }
    );
    if let Err(e) = selftest::run() {
        error!("datapath self-test failed, not starting: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    info!("datapath self-test passed: the kernel accepted and ran porin's programs");
    let datapath = match Datapath::load(features.attach_strategy().tc, Some(&cfg.bpffs)) {
        Ok(d) => d,
        Err(e) => {
            error!("loading the policy programs failed, not starting: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };

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
    // The quarantine gate goes up before discovery starts, so a container
    // that starts from now on waits for its classification; a host that
    // cannot have it is refused rather than left open (fail closed).
    let unified = gate::system_unified().ok();
    let gate = if gate::wanted(&cfg) {
        let attached = gate::system_unified()
            .and_then(|u| Gate::load(&cfg.bpffs, &u))
            .and_then(|mut g| g.attach(&gate::parents(&cfg)).map(|()| g));
        match attached {
            Ok(g) => {
                info!("gate: {}", g.status());
                Some(g)
            }
            Err(e) => {
                error!("quarantine gate unavailable, not starting: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        }
    } else {
        None
    };
    let (watcher, stopper) = match Watcher::new() {
        Ok(w) => w,
        Err(e) => {
            error!("inotify unavailable, discovery cannot start: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let (tx, rx) = mpsc::channel::<Input>();
    // New ports of the runtimes' bridges, guarded from the moment they
    // appear (the enforcer decides by the configuration it holds).
    let ports = match ports::spawn(tx.clone()) {
        Ok(p) => p,
        Err(e) => {
            error!("link notifications unavailable, not starting: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let resync = cfg.discovery.resync_interval;
    let discovery_tx = tx.clone();
    let discovery = thread::Builder::new()
        .name("discovery".into())
        .spawn(move || {
            let mut live = LiveDiscovery::new(scanner);
            let mut watcher = watcher;
            if first_scan(&mut live, &mut watcher, &discovery_tx) {
                live.run(watcher, resync, discovery_tx)
            }
        })
        .expect("spawn discovery thread");
    let shared = Arc::new(Shared::new(
        path.display().to_string(),
        feature_lines(&features, transport),
        cfg.flows.history as usize,
    ));
    let events = EventMaps::open(datapath.ebpf())
        .inspect_err(|e| error!("flow events unavailable: {e}"))
        .ok();
    let counters = CounterMaps::open(datapath.ebpf())
        .inspect_err(|e| error!("counter maps unavailable for metrics: {e}"))
        .ok();
    let reloader = Arc::new(Reloader::new(
        path.to_path_buf(),
        tx.clone(),
        shared.clone(),
    ));
    let io = io::start(IoSetup {
        shared: shared.clone(),
        socket: cfg.control.socket.clone(),
        socket_mode: cfg.control.mode,
        metrics: cfg.metrics.as_ref().map(|m| m.listen),
        flow_log: cfg.flows.log.clone(),
        rate_limit: cfg.flows.rate_limit,
        events,
        counters,
        reloader: Some(reloader.clone()),
    });
    let enforcer = Enforcer::new(cfg, path.display().to_string(), datapath)
        .with_shared(shared.clone())
        .with_gate(unified, gate);
    let enforcement = thread::Builder::new()
        .name("enforce".into())
        .spawn(move || enforcer.run(rx))
        .expect("spawn enforcement thread");

    info!(
        "ready; SIGHUP re-validates {}, SIGTERM or SIGINT stops",
        path.display()
    );
    test_panic();
    let status = loop {
        match signals.wait() {
            Ok(Signal::Stop(sig)) => {
                info!("signal {sig}: stopping");
                break ExitCode::SUCCESS;
            }
            Ok(Signal::Reload) => {
                // Nobody waits: the enforcement loop logs and records the
                // outcome, as the reloader does for an invalid file.
                let _ = reloader.request(Trigger::Signal, Instant::now(), false);
            }
            Err(e) => {
                error!("waiting for signals failed: {e}");
                break ExitCode::from(EXIT_RUNTIME);
            }
        }
    };
    stopper.stop();
    let _ = discovery.join();
    ports.stop();
    // The discovery and ports threads' senders are gone; dropping ours and
    // the reloader's ends the loop.
    drop(tx);
    reloader.close();
    let _ = enforcement.join();
    io.stop();
    status
}

/// `porin version`'s feature lines as (name, value), for `porin status`,
/// with the flow events transport in use (which the config may force).
fn feature_lines(f: &KernelFeatures, transport: EventsTransport) -> Vec<(String, String)> {
    f.to_string()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            let v = if k == "flow events" {
                transport.to_string()
            } else {
                v.trim().to_string()
            };
            (k.trim().to_string(), v)
        })
        .collect()
}

/// Discovery's first complete scan, reported before live discovery starts,
/// followed by [`Input::Scanned`]; retried until it succeeds. False when the
/// daemon stops first.
fn first_scan(live: &mut LiveDiscovery, watcher: &mut Watcher, tx: &mpsc::Sender<Input>) -> bool {
    loop {
        match live.pass(true, Instant::now()) {
            Ok((events, _)) => {
                for e in events {
                    if tx.send(e.into()).is_err() {
                        return false;
                    }
                }
                return tx.send(Input::Scanned).is_ok();
            }
            Err(e) => {
                error!(
                    "first discovery scan failed (nothing is applied until one succeeds; \
                     what a previous daemon left keeps enforcing): {e}"
                );
                if matches!(watcher.wait(ERROR_RETRY), Ok(Wake::Stop)) {
                    return false;
                }
            }
        }
    }
}

/// A panic in any thread ends the process: a half-dead daemon (e.g. the
/// enforcement thread gone, the socket still answering) would be worse than
/// a crash, which leaves enforcement in the kernel (`on_stop` does not run)
/// for the next start to adopt.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("porin: panic; aborting (enforcement stays in the kernel)");
        std::process::abort();
    }));
}

/// TEST ONLY (see docs/DEVELOPING.md): `PORIN_TEST_PANIC_AFTER_MS=N` makes a
/// thread panic N ms after start, to test a crash under traffic.
fn test_panic() {
    let Some(ms) = std::env::var("PORIN_TEST_PANIC_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    log::warn!("PORIN_TEST_PANIC_AFTER_MS={ms}: this daemon will panic (test only)");
    let _ = thread::Builder::new()
        .name("test-panic".into())
        .spawn(move || {
            thread::sleep(std::time::Duration::from_millis(ms));
            panic!("forced by PORIN_TEST_PANIC_AFTER_MS={ms}");
        });
}
