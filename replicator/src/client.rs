//! The client of a node's client protocol (docs/FORMAT.md, "Client
//! protocol"): what `lockstep client`, `lockstep status` and the tests use.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::protocol::{read_frame, Request, Response, SCAN_PAGE_ITEMS_MAX};

/// Why a request did not get an answer, or got an error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the node at {addr}: {source}")]
    Unreachable { addr: String, source: std::io::Error },
    #[error("the connection to the node failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{message}")]
    Remote { code: u8, message: String },
    #[error("the node answered {0:?}, which does not fit the request")]
    Unexpected(Box<Response>),
}

impl ClientError {
    /// The sysexits code `lockstep client` exits with.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => 69,
            ClientError::Io(_) | ClientError::Unexpected(_) => 74,
            ClientError::Remote { code, .. } => *code,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// One connection to a node.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
}

impl Client {
    /// Connects to the node's client address.
    pub fn connect(addr: &str) -> Result<Client> {
        let unreachable = |source| ClientError::Unreachable { addr: addr.to_string(), source };
        let addrs: Vec<_> = addr.to_socket_addrs().map_err(unreachable)?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolved to nothing");
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(Client { stream });
                }
                Err(e) => last = e,
            }
        }
        Err(unreachable(last))
    }

    /// Gives up on an answer after `timeout` (an error of unknown outcome
    /// for a write); `None` waits for ever (the default).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        Ok(self.stream.set_read_timeout(timeout)?)
    }

    /// Sends one request and reads its answer; a remote error becomes
    /// [`ClientError::Remote`].
    pub fn call(&mut self, request: &Request) -> Result<Response> {
        self.stream.write_all(&request.encode())?;
        let (kind, payload) = read_frame(&mut self.stream)?;
        let response =
            Response::decode(kind, &payload).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        match response {
            Response::Error { code, message } => Err(ClientError::Remote { code, message }),
            other => Ok(other),
        }
    }

    fn done(&mut self, request: &Request) -> Result<()> {
        match self.call(request)? {
            Response::Done => Ok(()),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Stores `value` under `key`; returns once the write is acknowledged
    /// (durable on both sites in `durable` mode).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.done(&Request::Put { key: key.to_vec(), value: value.to_vec() })
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.done(&Request::Delete { key: key.to_vec() })
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.call(&Request::Get { key: key.to_vec() })? {
            Response::Value(v) => Ok(v),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Every key/value pair whose key starts with `prefix`, in key order,
    /// fetched page by page.
    pub fn scan(&mut self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut all: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        loop {
            let after = all.last().map(|(k, _)| k.clone());
            let request = Request::Scan { prefix: prefix.to_vec(), after, limit: SCAN_PAGE_ITEMS_MAX };
            match self.call(&request)? {
                Response::Page { items, more } => {
                    all.extend(items);
                    if !more {
                        return Ok(all);
                    }
                }
                other => return Err(ClientError::Unexpected(Box::new(other))),
            }
        }
    }

    /// Makes the secondary at this address the primary of the next epoch;
    /// returns the epoch.
    pub fn promote(&mut self, force: bool) -> Result<u64> {
        match self.call(&Request::Promote { force })? {
            Response::Status(json) => serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| v["epoch"].as_u64())
                .ok_or_else(|| ClientError::Unexpected(Box::new(Response::Status(json)))),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Planned switchover, asked of the primary: returns the epoch of the
    /// new primary (its former secondary) once this node rejoined it.
    pub fn switchover(&mut self) -> Result<u64> {
        match self.call(&Request::Switchover)? {
            Response::Status(json) => serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| v["epoch"].as_u64())
                .ok_or_else(|| ClientError::Unexpected(Box::new(Response::Status(json)))),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// The node's status object.
    pub fn status(&mut self) -> Result<serde_json::Value> {
        match self.call(&Request::Status)? {
            Response::Status(json) => serde_json::from_str(&json)
                .map_err(|e| ClientError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }
}
