//! Exit codes: 0 success, 1 a run failed or was cancelled (or the engine failed), 2 invalid input.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failure,
    InvalidInput,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        match e {
            Exit::Success => Self::SUCCESS,
            Exit::Failure => Self::from(1),
            Exit::InvalidInput => Self::from(2),
        }
    }
}
