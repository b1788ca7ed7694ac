//! The `svcnft` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use svcnft_compiler::{Checked, SourceFile};
use svcnft_runtime::sources::read_policy;

/// Compile Kubernetes-style Service policies into nftables rulesets.
#[derive(Parser)]
#[command(name = "svcnft", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a policy and print its diagnostics.
    ///
    /// Exits 0 when the policy is valid (warnings allowed), 2 when it is invalid,
    /// 1 when a file cannot be read.
    Check {
        /// Policy files, or directories whose *.svc files are read in name order.
        #[arg(required = true, value_name = "POLICY")]
        policy: Vec<PathBuf>,
    },
    /// Compile a policy into the nftables ruleset of one node.
    ///
    /// Prints `nft -f` input (or, with --format json, the node plan and the ruleset).
    Compile {
        /// Policy files, or directories whose *.svc files are read in name order.
        #[arg(required = true, value_name = "POLICY")]
        policy: Vec<PathBuf>,
        /// The node to compile for.
        #[arg(long, value_name = "NAME")]
        node: String,
        #[arg(long, value_enum, default_value_t = Format::Nft)]
        format: Format,
    },
    /// Show how a node's ruleset changes between two policies, and the operations
    /// that would turn one into the other.
    Diff {
        /// The old policy: a file, or a directory of *.svc files.
        old: PathBuf,
        /// The new policy: a file, or a directory of *.svc files.
        new: PathBuf,
        #[arg(long, value_name = "NAME")]
        node: String,
    },
    /// Apply a node's ruleset to this network namespace: the difference from what
    /// the kernel holds, in one atomic transaction.
    ///
    /// Prints `applied N operations in T ms` or `no changes`.
    Apply {
        /// Policy files, or directories whose *.svc files are read in name order.
        #[arg(required = true, value_name = "POLICY")]
        policy: Vec<PathBuf>,
        /// The node this is.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// List the operations instead of sending them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the node agent: apply the policy, follow its changes, repair drift, and
    /// serve proxy health, metrics and the health-check node ports.
    Run {
        /// Policy files, or directories whose *.svc files are read in name order.
        #[arg(required = true, value_name = "POLICY")]
        policy: Vec<PathBuf>,
        /// The node this is.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// Where `/healthz` and `/livez` are served.
        #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:10256")]
        healthz_bind_address: std::net::SocketAddr,
        /// Where `/metrics`, `/proxyMode` and `/healthz` are served.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249")]
        metrics_bind_address: std::net::SocketAddr,
        /// Period of the full reconcile (e.g. 30s, 1m).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        sync_period: std::time::Duration,
        /// Remove svcnft's tables on SIGTERM or SIGINT (by default they stay).
        #[arg(long)]
        cleanup_on_exit: bool,
    },
    /// Remove svcnft's tables from this network namespace (and nothing else).
    Cleanup,
    /// Follow one new connection through a node's compiled rules: where it goes,
    /// and which source address the endpoint sees.
    Trace {
        /// Policy files, or directories whose *.svc files are read in name order.
        #[arg(required = true, value_name = "POLICY")]
        policy: Vec<PathBuf>,
        /// The node whose rules the packet meets.
        #[arg(long, value_name = "NAME")]
        node: String,
        /// The client address; one of the node's own addresses means the node sends it.
        #[arg(long, value_name = "ADDR")]
        from: String,
        /// The destination: ADDR:PORT, or [ADDR]:PORT for IPv6.
        #[arg(long, value_name = "ADDR:PORT")]
        to: String,
        #[arg(long, value_name = "tcp|udp|sctp", default_value = "tcp")]
        proto: String,
        /// A returning client: its address is already in this endpoint's affinity set.
        #[arg(long, value_name = "ADDR:PORT")]
        returning_to: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// `nft -f` input.
    Nft,
    /// The node plan and the ruleset as JSON.
    Json,
}

/// The exit codes of the command-line contract.
mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const INVALID: u8 = 2;
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap exits 2 on usage errors, which here means "invalid policy".
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::OTHER } else { exit::OK });
        }
    };
    ExitCode::from(match cli.command {
        Command::Check { policy } => check(&policy),
        Command::Compile { policy, node, format } => compile(&policy, &node, format),
        Command::Diff { old, new, node } => diff(&old, &new, &node),
        Command::Apply { policy, node, dry_run } => apply(&policy, &node, dry_run),
        Command::Run { policy, node, healthz_bind_address, metrics_bind_address, sync_period, cleanup_on_exit } => {
            run(svcnft_runtime::agent::Config {
                policy,
                node,
                healthz_bind_address,
                metrics_bind_address,
                sync_period,
                cleanup_on_exit,
            })
        }
        Command::Cleanup => cleanup(),
        Command::Trace { policy, node, from, to, proto, returning_to, json } => {
            trace(&policy, &node, &from, &to, &proto, returning_to.as_deref(), json)
        }
    })
}

/// Reads and checks a policy, printing its diagnostics; on failure, the exit code.
fn load(paths: &[PathBuf]) -> Result<(Vec<SourceFile>, Checked), u8> {
    let files = read_policy(paths).map_err(|e| {
        eprintln!("svcnft: {e}");
        exit::OTHER
    })?;
    match svcnft_compiler::check(&files) {
        Ok(checked) => {
            eprint!("{}", checked.warnings.render(&files));
            Ok((files, checked))
        }
        Err(diagnostics) => {
            eprint!("{}", diagnostics.render(&files));
            Err(exit::INVALID)
        }
    }
}

/// Loads and compiles a policy for one node; on failure, the exit code.
fn compile_for(paths: &[PathBuf], node: &str) -> Result<(svcnft_compiler::NodePlan, svcnft_compiler::Ruleset), u8> {
    let (_, checked) = load(paths)?;
    svcnft_compiler::compile(&checked.policy, node).map_err(|e| {
        eprintln!("svcnft: {e}");
        exit::INVALID
    })
}

fn compile(paths: &[PathBuf], node: &str, format: Format) -> u8 {
    let (plan, ruleset) = match compile_for(paths, node) {
        Ok(compiled) => compiled,
        Err(code) => return code,
    };
    match format {
        Format::Nft => print!("{}", svcnft_compiler::render::render(&ruleset)),
        Format::Json => {
            let json = serde_json::json!({ "plan": plan, "ruleset": ruleset });
            println!("{}", serde_json::to_string_pretty(&json).expect("plans serialise"));
        }
    }
    exit::OK
}

fn diff(old: &std::path::Path, new: &std::path::Path, node: &str) -> u8 {
    let compiled = |path: &std::path::Path| compile_for(&[path.to_path_buf()], node).map(|(_, ruleset)| ruleset);
    let (before, after) = match (compiled(old), compiled(new)) {
        (Ok(before), Ok(after)) => (before, after),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let (old_text, new_text) = (svcnft_compiler::render::render(&before), svcnft_compiler::render::render(&after));
    let text_diff = similar::TextDiff::from_lines(&old_text, &new_text);
    print!(
        "{}",
        text_diff.unified_diff().context_radius(3).header(&old.display().to_string(), &new.display().to_string())
    );
    let transaction = svcnft_compiler::diff::diff(&before, &after);
    if transaction.is_empty() {
        println!("no changes");
    } else {
        println!("{} operations:", transaction.len());
        for op in &transaction.ops {
            println!("  {op}");
        }
    }
    exit::OK
}

fn check(paths: &[PathBuf]) -> u8 {
    let files = match read_policy(paths) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("svcnft: {e}");
            return exit::OTHER;
        }
    };
    match svcnft_compiler::check(&files) {
        Ok(checked) => {
            eprint!("{}", checked.warnings.render(&files));
            exit::OK
        }
        Err(diagnostics) => {
            eprint!("{}", diagnostics.render(&files));
            exit::INVALID
        }
    }
}

fn open_applier() -> Result<svcnft_runtime::apply::Applier, u8> {
    svcnft_runtime::apply::Applier::open().map_err(|e| {
        eprintln!("svcnft: {e}");
        exit::OTHER
    })
}

fn summary(report: &svcnft_runtime::apply::ApplyReport) -> String {
    if report.operations == 0 {
        "no changes".into()
    } else {
        format!("applied {} operations in {} ms", report.operations, report.elapsed.as_millis())
    }
}

fn apply(paths: &[PathBuf], node: &str, dry_run: bool) -> u8 {
    let (_, ruleset) = match compile_for(paths, node) {
        Ok(compiled) => compiled,
        Err(code) => return code,
    };
    let mut applier = match open_applier() {
        Ok(applier) => applier,
        Err(code) => return code,
    };
    if dry_run {
        let transaction = applier.plan(&ruleset);
        if transaction.is_empty() {
            println!("no changes");
        }
        for op in &transaction.ops {
            println!("{op}");
        }
        return exit::OK;
    }
    match applier.apply(ruleset) {
        Ok(report) => {
            println!("{}", summary(&report));
            exit::OK
        }
        Err(e) => {
            eprintln!("svcnft: {e}");
            exit::OTHER
        }
    }
}

fn run(config: svcnft_runtime::agent::Config) -> u8 {
    svcnft_runtime::agent::log_to_stderr();
    match svcnft_runtime::agent::run(config) {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!(error = %e, "svcnft run failed");
            exit::OTHER
        }
    }
}

fn cleanup() -> u8 {
    let result = open_applier().and_then(|mut applier| {
        applier.cleanup().map_err(|e| {
            eprintln!("svcnft: {e}");
            exit::OTHER
        })
    });
    match result {
        Ok(report) => {
            println!("{}", summary(&report));
            exit::OK
        }
        Err(code) => code,
    }
}

fn trace(
    paths: &[PathBuf],
    node: &str,
    from: &str,
    to: &str,
    proto: &str,
    returning_to: Option<&str>,
    json: bool,
) -> u8 {
    use svcnft_compiler::trace::{parse_destination, parse_protocol, parse_source, Packet, TraceError, TraceOptions};
    let packet = (|| {
        let from = parse_source(from)?;
        let to = parse_destination(to)?;
        let returning_to = returning_to.map(parse_destination).transpose()?;
        Ok::<_, TraceError>((Packet::new(from, to, parse_protocol(proto)?)?, returning_to))
    })();
    let (packet, returning_to) = match packet {
        Ok(p) => p,
        Err(e) => {
            eprintln!("svcnft: {e}");
            return exit::INVALID;
        }
    };
    let (plan, ruleset) = match compile_for(paths, node) {
        Ok(compiled) => compiled,
        Err(code) => return code,
    };
    let trace = svcnft_compiler::trace::trace(&ruleset, &plan.node, &packet, &TraceOptions { returning_to });
    if json {
        println!("{}", serde_json::to_string_pretty(&trace).expect("traces serialise"));
    } else {
        println!("{trace}");
    }
    exit::OK
}
