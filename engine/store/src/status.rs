//! The one canonical status vocabulary.
//!
//! | Kiln       | seed A (Hangfire-like) | seed B (ClearML-like) |
//! |------------|------------------------|-----------------------|
//! | queued     | Waiting                | PENDING               |
//! | running    | Processing             | RUNNING               |
//! | succeeded  | Success                | COMPLETED             |
//! | failed     | Error                  | FAILED                |
//! | cancelled  | Error                  | CANCELLED             |
//! | skipped (steps only) | Waiting (never ran) | CANCELLED      |

use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
#[error("unknown status `{given}`; expected one of: {expected}")]
pub struct ParseStatusError {
    pub given: String,
    pub expected: &'static str,
}

macro_rules! status_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStatusError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.to_ascii_lowercase().as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ParseStatusError {
                        given: s.to_owned(),
                        expected: concat!($($text, " "),+),
                    }),
                }
            }
        }
    };
}

status_enum!(
    /// Status of a run.
    RunStatus {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

status_enum!(
    /// Status of a step within a run.
    StepStatus {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        Skipped => "skipped",
    }
);

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}
