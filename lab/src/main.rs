use std::fs;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use svcnft_lab::echo::{self, EchoConfig};
use svcnft_lab::http::{self, Target};
use svcnft_lab::lab::{self, state_file, LB_VIP4, LB_VIP6};
use svcnft_lab::lb::{self, LoadBalancerConfig};
use svcnft_lab::{Error, Lab, LabConfig};

/// A multi-node cluster of network namespaces for the source-IP tutorial.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab and leave it running.
    Up {
        /// Prefix of every namespace name.
        #[arg(long, default_value = "svlab")]
        prefix: String,
    },
    /// Remove the lab that `up` built.
    Down,
    /// Show the running lab and what to try.
    Status,
    /// Fetch a URL (http://ADDR:PORT/PATH or udp://ADDR:PORT) and print the body.
    Get {
        url: String,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Print the status code on the first line (for the lab library).
        #[arg(long)]
        wire: bool,
    },
    /// Serve HTTP and UDP echo, reporting the client's address.
    EchoServer {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The name reported as the hostname (the pod name).
        #[arg(long, default_value = "echo")]
        name: String,
        /// The HTTP status to answer with.
        #[arg(long, default_value_t = 200)]
        status: u16,
    },
    /// Apply a policy to every node of the running lab through svcnft's runtime.
    Apply {
        #[arg(required = true, value_name = "POLICY")]
        policy: Vec<PathBuf>,
    },
    /// Remove svcnft's rules from every node of the running lab.
    Cleanup,
    /// Run svcnft's node agent (`svcnft run`, default options) in this namespace:
    /// it keeps the node's rules and serves its health-check node ports.
    Agent {
        #[arg(required = true, value_name = "POLICY")]
        policy: Vec<PathBuf>,
        #[arg(long)]
        node: String,
    },
    /// Route VIPs to the backends whose health-check port answers 200 (run in the router).
    LoadBalancer {
        #[arg(long = "vip", required = true)]
        vips: Vec<IpAddr>,
        #[arg(long = "backend", required = true)]
        backends: Vec<IpAddr>,
        #[arg(long)]
        health_port: u16,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svcnft-lab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(prefix: String) -> Result<LabConfig, Error> {
    Ok(LabConfig { prefix, ..LabConfig::new(std::env::current_exe()?) })
}

/// The prefix recorded by `up`, if a lab is up.
fn recorded_prefix() -> Option<String> {
    let text = fs::read_to_string(state_file()).ok()?;
    Some(text.trim().to_string()).filter(|p| !p.is_empty())
}

/// The lab that `up` recorded.
fn running() -> Result<Lab, Error> {
    let prefix = recorded_prefix().ok_or_else(|| Error::NotUp("(none recorded)".into()))?;
    Lab::attach(config(prefix)?)
}

/// `svcnft apply`'s summary line.
fn summary(report: &svcnft_runtime::apply::ApplyReport) -> String {
    if report.operations == 0 {
        "no changes".into()
    } else {
        format!("applied {} operations in {} ms", report.operations, report.elapsed.as_millis())
    }
}

fn run(command: Cmd) -> Result<(), Error> {
    match command {
        Cmd::Up { prefix } => {
            if let Some(running) = recorded_prefix() {
                if Lab::attach(config(running.clone())?).is_ok() {
                    println!("lab `{running}` is already up; `down` removes it");
                    return Ok(());
                }
            }
            let lab = Lab::up(config(prefix)?)?;
            print!("{}", lab.guide());
            let state = lab.detach()?;
            println!("  state: {}", state.display());
        }
        Cmd::Down => match recorded_prefix() {
            Some(prefix) => {
                lab::remove(&prefix)?;
                fs::remove_file(state_file())?;
                println!("lab `{prefix}` removed");
            }
            None => println!("no lab is up"),
        },
        Cmd::Apply { policy } => {
            let lab = running()?;
            for node in lab.nodes() {
                println!("{}: {}", node.name, summary(&lab.apply_policy(&node.name, &policy)?));
            }
        }
        Cmd::Cleanup => {
            let lab = running()?;
            for node in lab.nodes() {
                println!("{}: {}", node.name, summary(&lab.cleanup(&node.name)?));
            }
        }
        Cmd::Agent { policy, node } => {
            let config = svcnft_runtime::agent::Config {
                policy,
                node,
                healthz_bind_address: ([0, 0, 0, 0], 10256).into(),
                metrics_bind_address: ([127, 0, 0, 1], 10249).into(),
                sync_period: Duration::from_secs(30),
                cleanup_on_exit: false,
            };
            svcnft_runtime::agent::log_to_stderr();
            svcnft_runtime::agent::run(config)?;
        }
        Cmd::Status => {
            let lab = running()?;
            print!("{}", lab.guide());
            for vip in [IpAddr::from(LB_VIP4), LB_VIP6.into()] {
                let family = if vip.is_ipv4() { "-4" } else { "-6" };
                let args = ["ip", family, "route", "show", &vip.to_string()];
                let route = lab.exec_in(lab.router(), &args)?;
                println!("load balancer: {}", route.trim());
            }
        }
        Cmd::Get { url, timeout_ms, wire } => {
            let response = http::get(&Target::parse(&url)?, Duration::from_millis(timeout_ms))?;
            if wire {
                print!("{}", response.to_wire());
            } else {
                print!("{}", response.body);
                if !(200..300).contains(&response.status) && response.status != 0 {
                    return Err(Error::Http(format!("HTTP status {}", response.status)));
                }
            }
        }
        Cmd::EchoServer { port, name, status } => {
            echo::serve(EchoConfig { name, port, status })?;
        }
        Cmd::LoadBalancer { vips, backends, health_port, interval_ms, timeout_ms } => lb::run(&LoadBalancerConfig {
            vips,
            backends,
            health_port,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
        })?,
    }
    Ok(())
}
