//! `kiln serve` and `kiln token`.

use crate::output::{errln, outln};

use kiln_server::{AppState, Claim, Roles, ServerConfig};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::{ServeArgs, TokenCommand};
use crate::context::Context;
use crate::exit::Exit;

fn roles(ctx: &Context) -> anyhow::Result<Roles> {
    Roles::load(&ctx.ws.configs_dir().join("roles.yaml"))
        .map_err(|e| kiln_runner::Error::Config(e).into())
}

/// How many SIGTERM and SIGINT have come since the top of `main` ([`listen_early`]).
static STOPS_ASKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// For `kiln serve`, before anything else: SIGTERM and SIGINT are counted from now on, and
/// [`StopSignals::recv`] reads the count. Without it, a signal before the runtime listens would
/// kill the process (or be ignored, started in the background by a script), and one that
/// comes while the runtime installs its handler, before its stream subscribes, would be lost.
pub fn listen_early() {
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // SAFETY: the action only increments an atomic integer, which is async-signal-safe.
        let registered = unsafe {
            signal_hook::low_level::register(signal, || {
                STOPS_ASKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        };
        if let Err(e) = registered {
            tracing::debug!(target: "app.backend", "cannot listen for signal {signal}: {e}");
        }
    }
}

/// SIGTERM and SIGINT, listened for from the moment the server starts.
struct StopSignals {
    term: Option<Signal>,
    int: Option<Signal>,
    /// How many signals [`Self::recv`] has answered for ([`STOPS_ASKED`]).
    answered: usize,
}

impl StopSignals {
    /// Listens from now on: a signal that comes while the server starts (opening the database,
    /// loading the plugins) is kept until [`Self::recv`] asks. (Until then the process would die
    /// of it, or, started in the background by a script, ignore SIGINT.)
    fn listen() -> Self {
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            answered: 0,
        }
    }

    /// Once a SIGTERM or SIGINT has come that no earlier call answered for (counted from the
    /// top of `main`; the runtime's streams wake it up). Without [`listen_early`] (tests of
    /// this module), the streams alone.
    async fn recv(&mut self) {
        async fn one(signal: &mut Option<Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        loop {
            // The count is taken before the runtime's own handler runs (it was registered
            // first), so a stream that wakes for a signal already answered for finds no new one.
            let asked = STOPS_ASKED.load(std::sync::atomic::Ordering::SeqCst);
            if asked > self.answered {
                self.answered = asked;
                return;
            }
            tokio::select! {
                () = one(&mut self.term) => {}
                () = one(&mut self.int) => {}
            }
            if STOPS_ASKED.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                // Not counted: no early listening in this process.
                return;
            }
        }
    }
}

pub async fn serve(ctx: &Context, args: ServeArgs) -> anyhow::Result<Exit> {
    let mut stop = StopSignals::listen();
    let limits = args.limits.to_limits();
    if let Err(e) = limits.validate() {
        errln!("error: {e}");
        return Ok(Exit::InvalidInput);
    }
    if args.insecure_no_auth {
        let warning = "--insecure-no-auth: EVERY REQUEST IS ACCEPTED WITH EVERY CLAIM, WITHOUT A TOKEN. \
                       Never expose this server beyond your own machine.";
        errln!("\n  WARNING: {warning}\n");
        tracing::warn!(target: "app.backend", "{warning}");
    }
    let starting = ctx.serving_service(&args.exec, &args.labels, args.plugin_instances);
    tokio::pin!(starting);
    let service = tokio::select! {
        service = &mut starting => service?,
        () = stop.recv() => {
            // Stopped while starting: the start is finished (a database half opened would be
            // left unclosed; a start that fails says why), nothing more is started, and the
            // engine is recorded stopped. A second signal quits at once (a start that waits,
            // for another process's migration say, would hold it).
            let started = tokio::select! {
                started = &mut starting => started,
                () = stop.recv() => {
                    errln!("kiln API: stopped again while it started; quitting without finishing the start");
                    std::process::exit(130);
                }
            };
            if let Err(e) = started?.stop_engine("shut down while starting").await {
                tracing::warn!(target: "app.backend", "cannot record the engine's stop: {e}");
            }
            errln!("kiln API stopped while it started");
            return Ok(Exit::Success);
        }
    };
    let config = ServerConfig {
        workflows_dir: args
            .workflows_dir
            .clone()
            .unwrap_or_else(|| ctx.ws.root().join("workflows")),
        insecure_no_auth: args.insecure_no_auth,
        limits,
        max_claimed_runs: args.max_claimed_runs,
    };
    let state = AppState::new(service, roles(ctx)?, config);
    let shutdown = async move { stop.recv().await };
    kiln_server::serve(state, args.addr, shutdown).await?;
    errln!(
        "kiln API stopped; runs in flight continue under their supervisors, for another engine or the next start to take over"
    );
    Ok(Exit::Success)
}

pub async fn token(ctx: &Context, cmd: TokenCommand) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    match cmd {
        TokenCommand::Create {
            name,
            claims,
            roles: role_names,
        } => {
            let claims: Vec<Claim> = match claims
                .iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| Claim::parse(c))
                .collect()
            {
                Ok(c) => c,
                Err(e) => {
                    errln!("error: --claims: {e}");
                    return Ok(Exit::InvalidInput);
                }
            };
            let role_names: Vec<String> = role_names
                .into_iter()
                .filter(|r| !r.trim().is_empty())
                .collect();
            match kiln_server::issue_token(&store, &roles(ctx)?, &name, &claims, &role_names).await
            {
                Ok((token, record)) => {
                    errln!(
                        "token `{}` created (id {}); it is shown only now, store it safely:",
                        record.name,
                        record.id
                    );
                    outln!("{token}");
                    Ok(Exit::Success)
                }
                Err(e) => {
                    errln!("error: {e}");
                    Ok(Exit::InvalidInput)
                }
            }
        }
        TokenCommand::List { json } => {
            let tokens = store.tokens().await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                outln!(
                    "{:<12}  {:<20}  {:<8}  CLAIMS / ROLES",
                    "ID",
                    "NAME",
                    "STATE"
                );
                for t in tokens {
                    let state = if t.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    outln!(
                        "{:<12}  {:<20}  {:<8}  claims [{}] roles [{}]",
                        t.id,
                        t.name,
                        state,
                        t.claims.join(", "),
                        t.roles.join(", ")
                    );
                }
            }
            Ok(Exit::Success)
        }
        TokenCommand::Revoke { name } => {
            if store.revoke_token(&name).await? {
                errln!("token `{name}` revoked");
                Ok(Exit::Success)
            } else {
                errln!("error: no active token named `{name}`");
                Ok(Exit::InvalidInput)
            }
        }
    }
}
