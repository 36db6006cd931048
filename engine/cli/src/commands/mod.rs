//! One module per command.

mod control;
mod init;
mod inspect;
mod plugin;
mod run;
mod serve;
mod validate;

pub use serve::listen_early;

use crate::cli::{Cli, Command, RunsCommand};
use crate::context::Context;
use crate::exit::Exit;
use crate::output::{errln, outln};

pub async fn dispatch(cli: Cli) -> Exit {
    // `init` creates the workspace the other commands open.
    if let Command::Init { dir } = cli.command {
        return init::init(dir).unwrap_or_else(|e| {
            errln!("error: {}", crate::output::error_chain(&e));
            Exit::Failure
        });
    }
    // A command that executes runs (and the server) reads and writes on SQLite connections of
    // the store's own and leaves sqlx's pool unopened; the others read through sqlx.
    let serving = matches!(cli.command, Command::Serve(_));
    let executes = matches!(
        cli.command,
        Command::Serve(_)
            | Command::Run(_)
            | Command::Resume(_)
            | Command::Runs(RunsCommand::Retry(_))
    );
    let reads = if executes {
        kiln_store::Reads::Direct
    } else {
        kiln_store::Reads::Pooled
    };
    let ctx = match Context::new(&cli.global, reads) {
        Ok(c) => c,
        Err(e) => {
            errln!("error: {}", crate::output::error_chain(&e));
            return Exit::InvalidInput;
        }
    };
    // `kiln serve` has handed its runs back when it ends: what its aborted executions queued
    // since is dropped, not committed (each would be refused by its fence, the lease freed).
    // Every other command commits what it queued (ARCHITECTURE.md, "Durability").
    let discards = serving;
    let result = match cli.command {
        Command::Run(args) => run::run(&ctx, args).await,
        Command::Validate { file } => validate::validate(&ctx, &file).await,
        Command::Schema => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&kiln_workflow::json_schema()).unwrap_or_default()
            );
            Ok(Exit::Success)
        }
        Command::Runs(RunsCommand::Cancel {
            run,
            kill_grace_secs,
        }) => control::cancel(&ctx, &run, kill_grace_secs).await,
        Command::Runs(RunsCommand::Retry(args)) => control::retry(&ctx, args).await,
        Command::Runs(RunsCommand::Delete { run, purge_outputs }) => {
            control::delete(&ctx, &run, purge_outputs).await
        }
        Command::Runs(cmd) => inspect::runs(&ctx, cmd).await,
        Command::Resume(args) => control::resume(&ctx, args).await,
        Command::Serve(args) => serve::serve(&ctx, args).await,
        Command::Token(cmd) => serve::token(&ctx, cmd).await,
        Command::Logs { run, step } => inspect::logs(&ctx, &run, step.as_deref()).await,
        Command::Models(cmd) => inspect::models(&ctx, cmd).await,
        Command::Engines { json } => inspect::engines(&ctx, json).await,
        Command::Plugins(cmd) => plugin::plugins(&ctx, cmd).await,
        Command::Supervise { .. } => unreachable!("handled before the runtime starts"),
        Command::Init { .. } => unreachable!("handled before the workspace is opened"),
    };
    let lost = if discards {
        ctx.close_discarding().await
    } else {
        ctx.close().await
    };
    if let Some(lost) = lost {
        database_lost(result, &lost);
    }
    result.unwrap_or_else(|e| {
        errln!("error: {}", crate::output::error_chain(&e));
        // Bad input, something missing, or something another run owns: the caller can fix it.
        use kiln_runner::Error as E;
        let store_input = |e: &kiln_store::Error| {
            matches!(
                e,
                kiln_store::Error::RunNotFound(_)
                    | kiln_store::Error::AmbiguousRun { .. }
                    | kiln_store::Error::DatabaseUrl { .. }
            )
        };
        match e.downcast_ref::<E>() {
            Some(
                E::Input(_)
                | E::Conflict(_)
                | E::NotFound(..)
                | E::UnknownWorkflow { .. }
                | E::Workflow(_)
                | E::Params(_)
                | E::Config(_),
            ) => Exit::InvalidInput,
            Some(E::Store(e)) if store_input(e) => Exit::InvalidInput,
            _ if e
                .downcast_ref::<kiln_store::Error>()
                .is_some_and(store_input) =>
            {
                Exit::InvalidInput
            }
            _ => Exit::Failure,
        }
    })
}

/// Ends the process at once when the database file was replaced or removed under it: its
/// connections must not be closed (see kiln-store's `database_file`), and the runtime's
/// shutdown would close them. Says why, once (and the command's own error, if another).
fn database_lost(result: anyhow::Result<Exit>, lost: &crate::context::Lost) -> ! {
    if let Err(e) = &result {
        let chain = crate::output::error_chain(e);
        if !chain.contains(&lost.why) {
            errln!("error: {chain}");
        }
    }
    errln!("error: {}", lost.report);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(Exit::Failure.code()));
}
