//! The daemon side of the control socket, on the I/O thread's executor.
//!
//! Who may ask: the socket file gets `control.mode` (0600 by default), and
//! every accepted connection is checked again with `SO_PEERCRED`: only root
//! and the daemon's own user are answered, whatever the file's mode and
//! group allow (a second lock in case the mode is looser than meant, or the
//! file was replaced).
//!
//! `Request::Reload` validates and applies the config file (through
//! [`crate::reload`]) on a blocking thread of its own, so other clients
//! are served meanwhile; its reply comes once the new policy is enforced.
//!
//! A connection may send several requests, one frame each. Every read and
//! write has a deadline ([`IO_TIMEOUT`]), so a client that stops halfway
//! cannot hold a task forever, and at most [`MAX_CONNECTIONS`] are served at
//! once. A frame that cannot be decoded gets an error reply, then the
//! connection is closed (the framing cannot be trusted after it).

use std::{
    cell::Cell,
    io,
    os::{
        fd::AsRawFd,
        unix::{fs::PermissionsExt, net::UnixListener as StdListener},
    },
    path::Path,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use log::{debug, info, warn};
use smol::{
    future::FutureExt,
    io::{AsyncReadExt, AsyncWriteExt},
    net::unix::{UnixListener, UnixStream},
    LocalExecutor, Timer,
};

use super::proto::{
    self, ErrorCode, ErrorReply, FlowFilter, FrameError, PolicyDump, Request, Response, Status,
    HEADER, MAX_REQUEST,
};
use crate::{
    flows::maps::{CounterMaps, EventControl},
    reload::{Reloader, Trigger},
    state::{lock, Counters, Shared},
};

/// Deadline for each request read and each reply write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are told to retry and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// How often a `--follow` connection looks for new flows.
const FOLLOW_TICK: Duration = Duration::from_millis(200);
/// Most flows one reply carries.
pub const MAX_FLOWS_PER_REPLY: usize = 10_000;

/// What the I/O thread's tasks read: the shared state and handles on the
/// datapath's event and counter maps (None when they could not be opened).
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub events: Option<EventControl>,
    pub counters: Option<CounterMaps>,
    pub reloader: Option<Arc<Reloader>>,
}

impl Ctx {
    /// Lost flow records (rate limited, ring full), summed over CPUs; a
    /// full perf buffer's losses, as the kernel reported them to the reader,
    /// count as ring full.
    pub fn lost(&self) -> [u64; 2] {
        let mut lost = self
            .events
            .as_ref()
            .map(EventControl::lost)
            .unwrap_or_default();
        lost[porin_common::flow::lost::RING_FULL as usize] +=
            Counters::get(&self.shared.counters.flow_events_perf_lost);
        *lock(&self.shared.lost) = lost;
        lost
    }
}

/// Binds `path` with permission bits `mode`. A stale socket file (nothing
/// answers on it) is replaced; a live one is an error (another daemon).
pub fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = StdListener::bind(path)?;
    // The mode is set right after bind; until then SO_PEERCRED still keeps
    // other users out.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    UnixListener::try_from(l)
}

/// Accepts connections until the listener fails.
pub async fn serve(listener: UnixListener, ctx: Rc<Ctx>, ex: Rc<LocalExecutor<'static>>) {
    let active = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("control socket: accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let active = active.clone();
        ex.spawn(async move {
            if active.get() >= MAX_CONNECTIONS {
                let _ = reply_error(&stream, ErrorCode::Internal, "too many clients; retry").await;
                return;
            }
            active.set(active.get() + 1);
            if let Err(e) = connection(stream, &ctx).await {
                debug!("control connection ended: {e}");
            }
            active.set(active.get() - 1);
        })
        .detach();
    }
}

/// The peer's uid (`SO_PEERCRED`).
pub fn peer_uid(s: &impl AsRawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket fd and a buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

async fn connection(mut s: UnixStream, ctx: &Ctx) -> Result<(), FrameError> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let uid = peer_uid(&s)?;
    if uid != 0 && uid != me {
        Counters::add(&ctx.shared.counters.control_refused, 1);
        info!("control socket: refused a client with uid {uid} (only root and uid {me})");
        reply_error(&s, ErrorCode::Denied, "permission denied").await?;
        return Ok(());
    }
    loop {
        let req = match read_request(&mut s).await {
            Ok(r) => r,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => {
                Counters::add(&ctx.shared.counters.control_bad_frames, 1);
                debug!("control socket: bad request: {e}");
                let _ = write(&mut s, &proto::encode_response(&Response::Error(e.reply()))).await;
                return Err(e);
            }
        };
        Counters::add(&ctx.shared.counters.control_requests, 1);
        match req {
            Request::Status => write(&mut s, &proto::encode_response(&status(ctx))).await?,
            Request::Policy => write(&mut s, &proto::encode_response(&policy(ctx))).await?,
            Request::Reload => {
                let reply = reload(ctx).await;
                write(&mut s, &proto::encode_response(&reply)).await?
            }
            Request::HttpCounts => {
                let counts = crate::metrics::http_allowed(ctx)
                    .into_iter()
                    .map(|(policy, allowed)| proto::PolicyCount { policy, allowed })
                    .collect();
                write(
                    &mut s,
                    &proto::encode_response(&Response::HttpCounts(counts)),
                )
                .await?
            }
            Request::Flows {
                filter,
                last,
                follow,
            } => {
                let since = flows(&mut s, ctx, &filter, last, 0).await?;
                if follow {
                    return follow_flows(s, ctx, &filter, since).await;
                }
            }
        }
    }
}

/// Sends the last `last` matching flows with `seq >= since`; returns the
/// sequence number to continue from.
async fn flows(
    s: &mut UnixStream,
    ctx: &Ctx,
    filter: &FlowFilter,
    last: u32,
    since: u64,
) -> Result<u64, FrameError> {
    let (views, next) = {
        let h = ctx.shared.history();
        let n = (last as usize).min(MAX_FLOWS_PER_REPLY);
        let views: Vec<_> = h.query(filter, since, n).iter().map(|r| r.view()).collect();
        (views, h.next_seq())
    };
    write(s, &proto::encode_response(&Response::Flows(views))).await?;
    Ok(next)
}

/// Streams new matching flows until the client hangs up (a read returns
/// EOF or anything: the client sends nothing while following).
async fn follow_flows(
    mut s: UnixStream,
    ctx: &Ctx,
    filter: &FlowFilter,
    mut since: u64,
) -> Result<(), FrameError> {
    let mut probe = s.clone();
    let hung_up = async move {
        let mut b = [0u8; 1];
        let _ = probe.read(&mut b).await;
    };
    let stream = async {
        loop {
            Timer::after(FOLLOW_TICK).await;
            if ctx.shared.history().next_seq() == since {
                continue;
            }
            since = flows(&mut s, ctx, filter, u32::MAX, since).await?;
        }
    };
    stream
        .or(async {
            hung_up.await;
            Ok(())
        })
        .await
}

async fn read_request(s: &mut UnixStream) -> Result<Request, FrameError> {
    let mut header = [0u8; HEADER];
    let first = timed(s.read(&mut header)).await?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    if first < HEADER {
        timed(s.read_exact(&mut header[first..]))
            .await
            .map_err(truncated)?;
    }
    let len = proto::payload_len(header, MAX_REQUEST)?;
    let mut payload = vec![0u8; len];
    timed(s.read_exact(&mut payload)).await.map_err(truncated)?;
    proto::decode_request(&payload)
}

/// The client hung up inside a frame: a malformed request, not an I/O
/// failure of the daemon's.
fn truncated(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Truncated(e)
    } else {
        FrameError::Io(e)
    }
}

async fn timed<T>(f: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    f.or(async {
        Timer::after(IO_TIMEOUT).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no progress within {IO_TIMEOUT:?}"),
        ))
    })
    .await
}

async fn write(s: &mut UnixStream, frame: &[u8]) -> io::Result<()> {
    timed(s.write_all(frame)).await
}

async fn reply_error(s: &UnixStream, code: ErrorCode, message: &str) -> io::Result<()> {
    let mut s = s.clone();
    let r = Response::Error(ErrorReply {
        code,
        message: message.into(),
    });
    write(&mut s, &proto::encode_response(&r)).await
}

fn status(ctx: &Ctx) -> Response {
    let snap = ctx.shared.snapshot();
    let sh = &ctx.shared;
    let mut maps = snap.maps.clone();
    if let Some(c) = &ctx.counters {
        maps.extend(c.ct_fill());
    }
    let (len, cap) = {
        let h = sh.history();
        (h.len() as u64, h.capacity() as u64)
    };
    Response::Status(Box::new(Status {
        version: crate::VERSION.into(),
        config_file: sh.config_file.clone(),
        uptime_s: sh.started.elapsed().as_secs(),
        policy_generation: snap.generation,
        datapath_slot: snap.datapath_slot,
        endpoints: snap.endpoints.clone(),
        identities: snap.identities.clone(),
        attached: snap.attached.clone(),
        attach_failures: snap.attach_failures.clone(),
        maps,
        kernel: sh.kernel.clone(),
        warnings: snap.warnings.clone(),
        gate: snap.gate.clone(),
        flows_in_history: len,
        history_capacity: cap,
        events_lost: ctx.lost().iter().sum(),
        last_reload: sh.last_reload(),
        conntrack: ctx
            .counters
            .as_ref()
            .map(|c| c.conntrack_status())
            .unwrap_or_default(),
    }))
}

/// Validates and applies the config file; answers once it is enforced or
/// refused. The wait happens on a blocking thread, not on this executor.
async fn reload(ctx: &Ctx) -> Response {
    let requested = Instant::now();
    let Some(reloader) = ctx.reloader.clone() else {
        return Response::Error(ErrorReply {
            code: ErrorCode::Internal,
            message: "this daemon cannot reload from the control socket; send SIGHUP".into(),
        });
    };
    info!("control socket: reload requested");
    Response::Reload(smol::unblock(move || reloader.reload(Trigger::Control, requested)).await)
}

fn policy(ctx: &Ctx) -> Response {
    let snap = ctx.shared.snapshot();
    Response::Policy(Box::new(PolicyDump {
        policy_generation: snap.generation,
        summary: snap.summary.clone(),
        explain: snap.explain.clone(),
        rules: snap.rules.clone(),
    }))
}
