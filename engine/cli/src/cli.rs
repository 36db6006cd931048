//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Run ML training pipelines described in YAML"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// More log output on stderr (-v info, -vv debug); KILN_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines on stderr as text, or as one JSON object per line (for log shippers).
    #[arg(
        long,
        value_enum,
        env = "KILN_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Workspace directory (projects/, configs/, .kiln/).
    #[arg(long, env = "KILN_WORKSPACE", default_value = ".", global = true)]
    pub workspace: PathBuf,
    /// Database URL; defaults to SQLite in <workspace>/.kiln/kiln.db.
    // Its value may hold a password: `--help` names the variable, not what it is set to.
    #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Directory of plugin components (*.wasm); defaults to <workspace>/.kiln/plugins.
    #[arg(long, env = "KILN_PLUGINS_DIR", global = true)]
    pub plugins_dir: Option<PathBuf>,
    /// Cache of compiled plugins; defaults to <workspace>/.kiln/cache.
    #[arg(long, env = "KILN_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// The machine's GPUs: a count (`2`) or device indices (`0,2`); detected with nvidia-smi
    /// when not given, none without it.
    #[arg(long, env = "KILN_GPUS", global = true)]
    pub gpus: Option<String>,
    /// How long a run's lease lives after its engine's last renewal (renewed every third of
    /// it): when an engine dies, another engine takes its runs over this long after (at once
    /// on the same machine). 1s to 1h.
    #[arg(long, env = "KILN_LEASE_TTL", value_name = "DURATION", default_value = "15s", value_parser = parse_lease_ttl, global = true)]
    pub lease_ttl: std::time::Duration,
}

fn parse_lease_ttl(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(3600) {
        return Err("must be between 1s and 1h".into());
    }
    Ok(d)
}

/// `KEY=VALUE`: a label this engine offers.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if !kiln_workflow::is_label(k) {
        return Err(format!(
            "`{k}` is not a label name: 1 to 63 letters, digits, `_`, `.` and `-`, starting with a letter or digit"
        ));
    }
    if k == "host" || k == "gpus" {
        return Err(format!("`{k}` is set by the engine itself"));
    }
    if v.is_empty() || v.len() > 253 || v.chars().any(char::is_control) {
        return Err(format!("the value of `{k}` must be 1 to 253 characters"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

impl Command {
    /// Whether the command only reads and prints: such a command may simply end when its
    /// output is closed (see `output.rs`); the others change state and must finish.
    pub fn only_reads(&self) -> bool {
        match self {
            Command::Validate { .. }
            | Command::Engines { .. }
            | Command::Schema
            | Command::Logs { .. }
            | Command::Models(_)
            | Command::Plugins(PluginsCommand::List { .. } | PluginsCommand::Inspect { .. }) => {
                true
            }
            Command::Plugins(PluginsCommand::New { .. } | PluginsCommand::Build { .. }) => false,
            Command::Runs(cmd) => matches!(
                cmd,
                RunsCommand::List { .. } | RunsCommand::Show { .. } | RunsCommand::Stats { .. }
            ),
            Command::Token(cmd) => matches!(cmd, TokenCommand::List { .. }),
            Command::Init { .. }
            | Command::Run(_)
            | Command::Resume(_)
            | Command::Serve(_)
            | Command::Supervise { .. } => false,
        }
    }
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// Create a workspace (configs, the reference workflows, the bundled plugins, demo
    /// releases) in an empty or new directory.
    Init {
        /// Where (default: the current directory, which must be empty).
        dir: Option<PathBuf>,
    },
    /// Run a workflow and follow it to the end.
    Run(RunArgs),
    /// Check a workflow file; exits 2 on any problem, 0 when valid.
    Validate { file: PathBuf },
    /// Print the JSON Schema of the workflow format (for editors).
    Schema,
    /// Inspect runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Continue a run whose engine was interrupted (killed, crashed, rebooted): re-attaches to
    /// its still-running programs instead of starting them again.
    Resume(ExecArgs),
    /// Print the logs of a run.
    Logs {
        /// Run id (or a unique prefix of it).
        run: String,
        /// Only this step.
        #[arg(long)]
        step: Option<String>,
    },
    /// Inspect registered models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Plugins: list the installed ones; inspect, scaffold and build one (`kiln plugin ...`).
    #[command(subcommand, alias = "plugin")]
    Plugins(PluginsCommand),
    /// Serve the HTTP API (/api/v1) and execute the runs it triggers.
    Serve(ServeArgs),
    /// Manage API bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List the engines sharing the database (not recorded stopped): id, command, host, pid,
    /// labels, the runs whose lease each holds, and how long since each renewed.
    Engines {
        #[arg(long)]
        json: bool,
    },
    /// (internal) Supervise a launched program; see kiln-supervisor.
    #[command(hide = true)]
    Supervise { state_dir: PathBuf },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The workflow file.
    pub file: PathBuf,
    /// A param as key=value; the value is read as YAML (`--param overrides='{epochs: 2}'`).
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Who started the run (recorded on the run and its models).
    #[arg(long, env = "KILN_USER")]
    pub created_by: Option<String>,
    #[command(flatten)]
    pub exec: ExecOptions,
}

// How a run executes (shared by run, resume and retry). A plain comment: a doc comment on a
// flattened struct would be taken for the `about` of the deferred subcommands using it.
#[derive(Args, Debug, Clone)]
pub struct ExecOptions {
    /// Most steps running at once (1 to 1024).
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_parallel: usize,
    /// Seconds between SIGTERM and SIGKILL when stopping a step's programs (0 to 3600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub kill_grace_secs: u64,
    /// Print the final run record as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Run id (or a unique prefix of it).
    pub run: String,
    #[command(flatten)]
    pub exec: ExecOptions,
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        /// Most runs listed (1 to 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show a run and its steps.
    Show {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Counts by status and the success rate.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run: its programs get SIGTERM, then SIGKILL after the grace period.
    Cancel {
        run: String,
        /// Seconds between SIGTERM and SIGKILL (when no engine is executing the run; 0 to 3600).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
        kill_grace_secs: u64,
    },
    /// Run a failed or cancelled run again from its unfinished steps, reusing the outputs of
    /// the steps that succeeded.
    Retry(ExecArgs),
    /// Delete a finished run's records (its training names become free again).
    Delete {
        run: String,
        /// Also delete what the run owns on disk: its logs and state, its training folders
        /// (refused while a registered model references a file in one) and the datasets no
        /// other run used.
        #[arg(long)]
        purge_outputs: bool,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "KILN_ADDR")]
    pub addr: std::net::SocketAddr,
    /// Workflows that `POST /runs` can start, by name; defaults to <workspace>/workflows.
    #[arg(long, env = "KILN_WORKFLOWS_DIR")]
    pub workflows_dir: Option<PathBuf>,
    /// Accept requests without tokens, with every claim. For local experiments only.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// A label this engine offers runs, KEY=VALUE (repeatable); a step's `runs_on` asks for
    /// labels. `host` and `gpus` are always offered.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Take runs from the shared database (queued for this engine's labels, or whose engine
    /// died) only while fewer than N execute here (1 to 100000); runs triggered on this engine
    /// always start.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_claimed_runs: usize,
    /// Plugin instances alive at once in this server (1 to 4096): one per plugin step running,
    /// in any run. A step starts once one is free. Each reserves address space, not memory,
    /// and is reused warm by the steps after it.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=kiln_plugin_host::MAX_INSTANCE_SLOTS as u64))]
    pub plugin_instances: usize,
    #[command(flatten)]
    pub limits: ServeLimits,
    #[command(flatten)]
    pub exec: ExecOptions,
}

// Protection of `kiln serve` against slow and hostile clients (durations like `10s`, `500ms`,
// `2m`). The defaults are `kiln_server::ServerLimits::default()`. (A plain comment, as for
// `ExecOptions`.)
#[derive(Args, Debug, Clone)]
pub struct ServeLimits {
    /// Time a client has to send a request's headers (from connecting, or from the end of its
    /// previous response); a client that dribbles them is disconnected.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: std::time::Duration,
    /// Time a client has to send a whole request body, from the end of its headers.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: std::time::Duration,
    /// Time a kept-alive connection may wait for its next request before it is closed (at most
    /// --header-timeout).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Time a response may wait for a client that does not read it before the connection is
    /// dropped.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub write_timeout: std::time::Duration,
    /// Connections served at once; more are answered 503 with Retry-After and closed.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
    /// Failed authentications of one token id within --auth-lockout before that id is locked
    /// out (429 with Retry-After) for --auth-lockout.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub auth_max_failures: u32,
    /// The window in which failed authentications are counted, and how long a lockout lasts.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub auth_lockout: std::time::Duration,
}

impl ServeLimits {
    pub fn to_limits(&self) -> kiln_server::ServerLimits {
        kiln_server::ServerLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
            auth_max_failures: self.auth_max_failures,
            auth_lockout: self.auth_lockout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own checks of the whole command tree, the deferred subcommands included (they
    /// are built only when used, so a mistake in one would otherwise show only there).
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// A deferred subcommand keeps its own description, not that of a struct it flattens.
    #[test]
    fn deferred_subcommands_keep_their_descriptions() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        cli.build();
        let mut about = |path: &[&str]| {
            let mut cmd = &mut cli;
            for name in path {
                cmd = cmd.find_subcommand_mut(name).unwrap();
            }
            cmd.build();
            cmd.get_about().map(|a| a.to_string()).unwrap_or_default()
        };
        assert_eq!(about(&["run"]), "Run a workflow and follow it to the end");
        let serve = about(&["serve"]);
        assert!(serve.starts_with("Serve the HTTP API"), "{serve}");
        assert!(!about(&["runs", "retry"]).contains("How a run executes"));
    }

    #[test]
    fn serve_flag_defaults_are_the_server_defaults() {
        let cli = Cli::try_parse_from(["kiln", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(
            args.limits.to_limits(),
            kiln_server::ServerLimits::default()
        );
    }
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum TokenCommand {
    /// Create a token; it is printed once and stored only as a hash.
    Create {
        /// Name of the token, recorded as `created_by` on the runs and models it creates.
        #[arg(long)]
        name: String,
        /// Claims, comma-separated: CreateTrainingRun, ScheduleTrainingRun, DeleteTrainingRun,
        /// PublishTrainingRunTrainedModel, ViewTrainingRuns.
        #[arg(long, value_delimiter = ',')]
        claims: Vec<String>,
        /// Roles from configs/roles.yaml, comma-separated (built in: viewer, trainer, publisher,
        /// admin).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name or id.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum ModelsCommand {
    /// List registered models.
    List {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum PluginsCommand {
    /// List installed plugins with their actions and grants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// What a component file is: name, version, the kiln:plugin version it was built for,
    /// actions with their inputs and outputs, the programs it launches (and whether this
    /// workspace grants them), digest, size, and whether this engine loads it. Exit 1 when it
    /// does not load.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Scaffold a plugin crate NAME in DIR/NAME (default: ./NAME): the SDK, one sample action
    /// with typed inputs and declared outputs, unit and component tests, a README.
    New {
        name: String,
        /// The folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the plugin crate in DIR (default: .) for wasm32-wasip2 (adding the target when
    /// missing), check that it loads, and install it into the workspace's plugins directory.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}
