//! The files capability: the directories a plugin call may see, each with a typed role that
//! fixes where the guest sees it and whether it may write there. Nothing else of the host's
//! file system is reachable (WASI preopens only).

use std::path::PathBuf;

/// What a granted directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The project's extracted datasets, read-only at `/data`.
    TrainingData,
    /// The training's output folder, read-write at `/output`.
    TrainingOutput,
    /// The plugin's own configuration folder (`configs/<plugin>/`), read-only at `/config`.
    Config,
}

impl Role {
    /// The role's name in `step-context` (`kiln:plugin` WIT).
    pub fn name(self) -> &'static str {
        match self {
            Role::TrainingData => "training-data",
            Role::TrainingOutput => "training-output",
            Role::Config => "config",
        }
    }

    /// Where the guest sees the directory.
    pub fn guest_path(self) -> &'static str {
        match self {
            Role::TrainingData => "/data",
            Role::TrainingOutput => "/output",
            Role::Config => "/config",
        }
    }

    pub fn writable(self) -> bool {
        self == Role::TrainingOutput
    }

    /// `host_path` granted in this role.
    pub fn grant(self, host_path: PathBuf) -> GrantedDir {
        GrantedDir {
            role: self,
            host_path,
        }
    }
}

/// A directory a plugin call may use.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantedDir {
    pub role: Role,
    pub host_path: PathBuf,
}

impl GrantedDir {
    pub fn guest_path(&self) -> &'static str {
        self.role.guest_path()
    }

    pub fn writable(&self) -> bool {
        self.role.writable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_training_output_is_writable() {
        for (role, name, guest, writable) in [
            (Role::TrainingData, "training-data", "/data", false),
            (Role::TrainingOutput, "training-output", "/output", true),
            (Role::Config, "config", "/config", false),
        ] {
            let dir = role.grant(PathBuf::from("/x"));
            assert_eq!(
                (role.name(), dir.guest_path(), dir.writable()),
                (name, guest, writable)
            );
        }
    }
}
