//! A multi-node cluster on one machine, built from network namespaces, reproducing the
//! topology of Kubernetes' "source IP" tutorial so that svcnft's rules can be tested with
//! real packets: which endpoint does a packet reach, and what source does the pod see?

pub mod echo;
pub mod http;
pub mod lab;
pub mod lb;

use std::time::Duration;

pub use lab::{Lab, LabConfig, Node, Pod};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{0}`: {1}")]
    Spawn(String, #[source] std::io::Error),
    #[error("no {0} `{1}` in this lab")]
    Unknown(&'static str, String),
    #[error("no lab `{0}` is up")]
    NotUp(String),
    #[error("not ready after {0:?}")]
    Timeout(Duration),
    #[error("invalid URL `{0}`: expected http://ADDR[:PORT][/PATH] or udp://ADDR:PORT")]
    Url(String),
    #[error("{0}")]
    Http(String),
    #[error("invalid policy:\n{0}")]
    Policy(String),
    #[error(transparent)]
    Apply(#[from] svcnft_runtime::apply::ApplyError),
    #[error(transparent)]
    Agent(#[from] svcnft_runtime::agent::AgentError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
