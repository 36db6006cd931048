//! Shared state of the server.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_runner::{Runner, Workspace};
use kiln_store::Store;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthGuard, Roles};
use crate::limits::ServerLimits;
use crate::manager::RunManager;

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where `POST /runs {workflow}` finds workflows by name (`*.yaml`).
    pub workflows_dir: PathBuf,
    /// Accept every request as an all-claims caller named `anonymous` (local use only).
    pub insecure_no_auth: bool,
    /// Timeouts, the connection bound and the authentication lockout.
    pub limits: ServerLimits,
}

struct Shared {
    runner: Runner,
    manager: RunManager,
    roles: Roles,
    config: ServerConfig,
    auth: AuthGuard,
    shutdown: CancellationToken,
}

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(runner: Runner, roles: Roles, config: ServerConfig) -> Self {
        let manager = RunManager::new(runner.clone());
        Self(Arc::new(Shared {
            runner,
            manager,
            roles,
            auth: AuthGuard::new(config.limits.auth_max_failures, config.limits.auth_lockout),
            config,
            shutdown: CancellationToken::new(),
        }))
    }

    pub fn runner(&self) -> &Runner {
        &self.0.runner
    }

    pub fn store(&self) -> &Store {
        self.0.runner.store()
    }

    pub fn workspace(&self) -> &Workspace {
        self.0.runner.workspace()
    }

    pub fn manager(&self) -> &RunManager {
        &self.0.manager
    }

    pub fn roles(&self) -> &Roles {
        &self.0.roles
    }

    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    pub fn insecure(&self) -> bool {
        self.0.config.insecure_no_auth
    }

    pub(crate) fn auth(&self) -> &AuthGuard {
        &self.0.auth
    }

    pub fn limits(&self) -> &ServerLimits {
        &self.0.config.limits
    }

    /// Cancelled when the server begins to shut down: live log streams end then.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }
}
