//! The I/O thread of `porin run`: one smol executor with a few long-lived
//! tasks, each with one job: the flow reader, the control socket and the
//! metrics endpoint (each connection gets a short-lived task of its own).

use std::{
    net::SocketAddr,
    path::PathBuf,
    rc::Rc,
    sync::Arc,
    thread::{self, JoinHandle},
};

use log::{error, info, warn};
use smol::{channel, LocalExecutor};

use crate::{
    config::FlowLog as FlowLogConfig,
    control::server::{self, Ctx},
    flows::{
        log::FlowLog,
        maps::{CounterMaps, EventMaps},
        reader::{self, Clock, Sink},
    },
    metrics,
    reload::Reloader,
    state::Shared,
};

/// What the I/O thread is given.
pub struct IoSetup {
    pub shared: Arc<Shared>,
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub metrics: Option<SocketAddr>,
    pub flow_log: Option<FlowLogConfig>,
    /// Events per second the datapath may emit in total.
    pub rate_limit: u32,
    pub events: Option<EventMaps>,
    pub counters: Option<CounterMaps>,
    /// For `porin reload` (None: the socket refuses reloads).
    pub reloader: Option<Arc<Reloader>>,
}

/// The running I/O thread; [`IoThread::stop`] ends it.
pub struct IoThread {
    stop: channel::Sender<()>,
    thread: JoinHandle<()>,
    socket: PathBuf,
}

impl IoThread {
    pub fn stop(self) {
        self.stop.close();
        let _ = self.thread.join();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Binds the socket and the metrics listener (so they answer once this
/// returns) and starts the thread. A failure to bind is logged and that
/// service stays off: enforcement does not depend on it.
pub fn start(setup: IoSetup) -> IoThread {
    let (stop, stopped) = channel::bounded::<()>(1);
    let socket = setup.socket.clone();
    let control = match server::bind(&setup.socket, setup.socket_mode) {
        Ok(l) => {
            info!(
                "control socket {} (mode {:04o})",
                setup.socket.display(),
                setup.socket_mode
            );
            Some(l)
        }
        Err(e) => {
            error!(
                "control socket {} unavailable: {e}; porin status/flows/policy will not work",
                setup.socket.display()
            );
            None
        }
    };
    let metrics_listener =
        setup
            .metrics
            .and_then(|addr| match smol::block_on(metrics::server::bind(addr)) {
                Ok(l) => {
                    info!("metrics on http://{addr}/metrics");
                    Some(l)
                }
                Err(e) => {
                    error!("metrics endpoint {addr} unavailable: {e}");
                    None
                }
            });
    let thread = thread::Builder::new()
        .name("io".into())
        .spawn(move || run(setup, control, metrics_listener, stopped))
        .expect("spawn the I/O thread");
    IoThread {
        stop,
        thread,
        socket,
    }
}

fn run(
    setup: IoSetup,
    control: Option<smol::net::unix::UnixListener>,
    metrics_listener: Option<smol::net::TcpListener>,
    stopped: channel::Receiver<()>,
) {
    let ex = Rc::new(LocalExecutor::new());
    let (source, mut events) = match setup.events {
        Some(e) => {
            let (source, ctl) = e.split();
            (Some(source), Some(ctl))
        }
        None => (None, None),
    };
    if let Some(ctl) = &mut events {
        if let Err(e) = ctl.set_rate(setup.rate_limit) {
            warn!("flow events stay off: {e}");
        }
    }
    let ctx = Rc::new(Ctx {
        shared: setup.shared.clone(),
        events,
        counters: setup.counters,
        reloader: setup.reloader,
    });
    if let Some(source) = source {
        let log = setup.flow_log.as_ref().and_then(|c| {
            FlowLog::open(&c.path, c.max_size, c.keep)
                .inspect_err(|e| error!("flow log {} unavailable: {e}", c.path.display()))
                .ok()
        });
        let sink = Sink {
            shared: setup.shared.clone(),
            log,
            clock: Clock::now(),
        };
        ex.spawn(async move {
            if let Err(e) = reader::run(source, sink).await {
                error!("flow reader stopped: {e}");
            }
        })
        .detach();
    }
    if let Some(l) = control {
        ex.spawn(server::serve(l, ctx.clone(), ex.clone())).detach();
    }
    if let Some(l) = metrics_listener {
        ex.spawn(metrics::server::serve(l, ctx.clone(), ex.clone()))
            .detach();
    }
    // Runs the tasks until the daemon stops (the sender is closed).
    smol::block_on(ex.run(async {
        let _ = stopped.recv().await;
    }));
}
