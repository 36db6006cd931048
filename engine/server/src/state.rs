//! Shared state of the server.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_runner::{Runner, Workspace};
use kiln_store::Store;

use crate::auth::{Roles, VerifiedCache};
use crate::manager::RunManager;

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where `POST /runs {workflow}` finds workflows by name (`*.yaml`).
    pub workflows_dir: PathBuf,
    /// Accept every request as an all-claims caller named `anonymous` (local use only).
    pub insecure_no_auth: bool,
}

struct Shared {
    runner: Runner,
    manager: RunManager,
    roles: Roles,
    config: ServerConfig,
    verified: VerifiedCache,
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
            config,
            verified: VerifiedCache::default(),
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

    pub(crate) fn verified(&self) -> &VerifiedCache {
        &self.0.verified
    }
}
