//! The command side of the control socket (blocking: one request, one
//! reply, or a stream of replies while following flows).

use std::{io, os::unix::net::UnixStream, path::Path, time::Duration};

use super::proto::{self, ErrorReply, FrameError, Request, Response};

/// How long a command waits for the daemon's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is `porin run` running, and are you root?)")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("control socket: {0}")]
    Frame(#[from] FrameError),
    #[error("the daemon refused: {}", .0.message)]
    Refused(ErrorReply),
    #[error("unexpected reply from the daemon: {0}")]
    Unexpected(String),
}

pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let _ = stream.set_read_timeout(Some(REPLY_TIMEOUT));
        let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
        Ok(Client { stream })
    }

    /// Waits up to `t` for replies from now on (a reload takes longer than
    /// [`REPLY_TIMEOUT`]).
    pub fn set_reply_timeout(&mut self, t: Duration) {
        let _ = self.stream.set_read_timeout(Some(t));
    }

    /// Sends `req` and returns the reply; an error reply is an `Err`.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        match proto::call(&mut self.stream, req)? {
            Response::Error(e) => Err(ClientError::Refused(e)),
            other => Ok(other),
        }
    }

    /// The next reply of a stream (`--follow`), waiting as long as it takes.
    pub fn next_reply(&mut self) -> Result<Response, ClientError> {
        let _ = self.stream.set_read_timeout(None);
        match proto::next_response(&mut self.stream)? {
            Response::Error(e) => Err(ClientError::Refused(e)),
            other => Ok(other),
        }
    }
}
