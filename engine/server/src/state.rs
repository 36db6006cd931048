//! Shared state of the server.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_runner::{RunService, Workspace};
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
    /// Claims from the database stop while this many runs execute here.
    pub max_claimed_runs: usize,
}

struct Shared {
    service: RunService,
    manager: RunManager,
    /// `configs/roles.yaml`, replaced when it changes (hot reload).
    roles: std::sync::RwLock<Arc<Roles>>,
    config: ServerConfig,
    auth: AuthGuard,
    shutdown: CancellationToken,
}

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The server's state over `service`, which starts workflows from `config.workflows_dir`.
    pub fn new(service: RunService, roles: Roles, config: ServerConfig) -> Self {
        let service = service.with_workflows(config.workflows_dir.clone());
        let manager = RunManager::new(service.clone()).with_max_claimed(config.max_claimed_runs);
        Self(Arc::new(Shared {
            service,
            manager,
            roles: std::sync::RwLock::new(Arc::new(roles)),
            auth: AuthGuard::new(config.limits.auth_max_failures, config.limits.auth_lockout),
            config,
            shutdown: CancellationToken::new(),
        }))
    }

    /// Every run-level operation goes through the run service.
    pub fn service(&self) -> &RunService {
        &self.0.service
    }

    pub fn store(&self) -> &Store {
        self.0.service.store()
    }

    pub fn workspace(&self) -> &Workspace {
        self.0.service.workspace()
    }

    pub fn manager(&self) -> &RunManager {
        &self.0.manager
    }

    pub fn roles(&self) -> Arc<Roles> {
        self.0
            .roles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads `path` (the roles file) again; an invalid one is logged and the roles in use stay.
    pub fn reload_roles(&self, path: &std::path::Path) {
        match Roles::load(path) {
            Ok(roles) => {
                *self.0.roles.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(roles);
                tracing::info!(target: "app.reload", "roles reloaded from {}", path.display());
            }
            Err(e) => tracing::warn!(
                target: "app.reload",
                "{e}; the roles loaded before stay in use"
            ),
        }
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
