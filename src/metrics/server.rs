//! A minimal HTTP/1.0 server for `GET /metrics`: one request per
//! connection, read with a deadline and a size limit, answered and closed.
//! Nothing else is served.

use std::{net::SocketAddr, rc::Rc, time::Duration};

use log::{debug, warn};
use smol::{
    future::FutureExt,
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    LocalExecutor, Timer,
};

use super::{render, Sample};
use crate::control::server::Ctx;

/// Deadline for reading a request and writing the reply.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, ctx: Rc<Ctx>, ex: Rc<LocalExecutor<'static>>) {
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                let ctx = ctx.clone();
                ex.spawn(async move {
                    let answer = handle(s, &ctx).or(async {
                        Timer::after(TIMEOUT).await;
                        Err(std::io::ErrorKind::TimedOut.into())
                    });
                    if let Err(e) = answer.await {
                        debug!("metrics: {peer}: {e}");
                    }
                })
                .detach();
            }
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut s: TcpStream, ctx: &Ctx) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => {
            let body = render(&Sample::take(ctx));
            respond(
                &mut s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        (Some("GET"), Some(_)) => {
            respond(&mut s, "404 Not Found", "text/plain", "try /metrics\n").await
        }
        _ => respond(&mut s, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.flush().await
}
