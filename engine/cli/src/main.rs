//! `kiln`: the command-line entry point. Parses arguments, opens the workspace, and hands work
//! to the engine crates. Architecture invariant: no engine logic lives here, only wiring,
//! presentation and exit codes (0 success, 1 run failed or cancelled, 2 invalid input).

mod alloc;
mod cli;
mod commands;
mod context;
mod exit;
mod output;
mod progress;

use crate::output::errln;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit::Exit;

#[global_allocator]
static ALLOCATOR: alloc::Switching = alloc::Switching;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The supervisor runs synchronously, before any runtime or thread exists in this process.
    if let Command::Supervise { state_dir } = &cli.command {
        return std::process::ExitCode::from(kiln_supervisor::supervise_main(state_dir) as u8);
    }
    // The server's allocator is mimalloc, from before its runtime's threads start (alloc.rs).
    let serving = matches!(cli.command, Command::Serve(_));
    if serving {
        commands::listen_early();
        alloc::use_mimalloc();
    }
    let only_reads = cli.command.only_reads();
    if only_reads {
        output::die_on_sigpipe();
    }
    // The server logs its requests and runs at info level by default.
    init_tracing(cli.verbose.max(u8::from(serving)), cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    let exit = runtime.block_on(commands::dispatch(cli));
    // Do not wait for blocked tasks (e.g. a pending stdin read) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // A command whose output is the point fails when it could not be written (`> /dev/full`).
    if only_reads
        && matches!(exit, Exit::Success)
        && let Some(e) = output::write_failed().map(str::to_owned).or_else(|| {
            use std::io::Write as _;
            std::io::stdout().flush().err().map(|e| e.to_string())
        })
    {
        errln!("error: cannot write the output: {e}");
        return Exit::Failure.into();
    }
    exit.into()
}

fn init_tracing(verbose: u8, format: cli::LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
        // sqlx warns of a PostgreSQL URL option it does not know with the option's value,
        // which may be a password (`PASSWORD=`, `Password=`): never logged.
        .add_directive(
            "sqlx_postgres::options=error"
                .parse()
                .expect("a valid directive"),
        );
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| output::Lossy(std::io::stderr()));
    let _ = match format {
        cli::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // One object per line: timestamp, level, target, fields (the message among them).
        cli::LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
