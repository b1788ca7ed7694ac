//! The `svcnft` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
            return ExitCode::from(if e.use_stderr() {
                exit::OTHER
            } else {
                exit::OK
            });
        }
    };
    ExitCode::from(match cli.command {
        Command::Check { policy } => check(&policy),
    })
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
