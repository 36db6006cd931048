//! How the server protects itself from slow and hostile clients: connection and request
//! timeouts, the connection bound, and the lockout of token ids after failed authentications.
//! Each setting is named after its `kiln serve` flag, which is what errors name too.

use std::time::Duration;

/// Limits of `kiln serve`. [`ServerLimits::default`] holds the defaults of the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// `--header-timeout`: how long a client may take to send a request's head (request line
    /// and headers), counted from the connection's start or from the end of its previous
    /// response. A client that dribbles its headers is disconnected when it runs out.
    pub header_timeout: Duration,
    /// `--body-timeout`: how long a client may take to send a whole request body, counted from
    /// the end of the head (a total, not a per-read timeout: dribbling does not extend it).
    pub body_timeout: Duration,
    /// `--idle-timeout`: how long a kept-alive connection may wait without a request before it
    /// is closed.
    pub idle_timeout: Duration,
    /// `--write-timeout`: how long writing a response may stay blocked because the client does
    /// not read it; the connection is dropped then. (Live log streams to a reading client are
    /// never blocked for long: they have no overall timeout.)
    pub write_timeout: Duration,
    /// `--max-connections`: connections served at once; the next ones are answered `503
    /// too_many_connections` at once and closed.
    pub max_connections: usize,
    /// `--auth-max-failures`: failed authentications of one token id within `auth_lockout`
    /// before that id is locked out for `auth_lockout` (429, no password hashing).
    pub auth_max_failures: u32,
    /// `--auth-lockout`: the window in which failures are counted, and how long a lockout lasts.
    pub auth_lockout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_connections: 256,
            auth_max_failures: 10,
            auth_lockout: Duration::from_secs(60),
        }
    }
}

/// A setting of [`ServerLimits`] out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("{flag} must be between {min} and {max}; got {value}")]
    OutOfRange {
        flag: &'static str,
        value: String,
        min: String,
        max: String,
    },
    #[error(
        "--idle-timeout ({idle}) cannot be longer than --header-timeout ({header}): a kept-alive \
         connection waits for its next request's head, which --header-timeout bounds; raise \
         --header-timeout or lower --idle-timeout"
    )]
    IdleLongerThanHeader { idle: String, header: String },
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn check<T: PartialOrd + Copy>(
    flag: &'static str,
    value: T,
    min: T,
    max: T,
    show: impl Fn(T) -> String,
) -> Result<(), LimitsError> {
    if value < min || value > max {
        return Err(LimitsError::OutOfRange {
            flag,
            value: show(value),
            min: show(min),
            max: show(max),
        });
    }
    Ok(())
}

impl ServerLimits {
    /// Check every setting; the error names the flag, the range and the value given.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        check(
            "--header-timeout",
            self.header_timeout,
            ms(100),
            secs(600),
            human,
        )?;
        check(
            "--body-timeout",
            self.body_timeout,
            ms(100),
            secs(3600),
            human,
        )?;
        check(
            "--idle-timeout",
            self.idle_timeout,
            ms(100),
            secs(600),
            human,
        )?;
        check(
            "--write-timeout",
            self.write_timeout,
            ms(100),
            secs(3600),
            human,
        )?;
        check("--max-connections", self.max_connections, 1, 100_000, |v| {
            v.to_string()
        })?;
        check(
            "--auth-max-failures",
            self.auth_max_failures,
            1,
            1_000_000,
            |v| v.to_string(),
        )?;
        check(
            "--auth-lockout",
            self.auth_lockout,
            secs(1),
            secs(86_400),
            human,
        )?;
        if self.idle_timeout > self.header_timeout {
            return Err(LimitsError::IdleLongerThanHeader {
                idle: human(self.idle_timeout),
                header: human(self.header_timeout),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_flag() {
        ServerLimits::default().validate().unwrap();
        let zero = ServerLimits {
            header_timeout: Duration::ZERO,
            ..Default::default()
        };
        let e = zero.validate().unwrap_err().to_string();
        assert!(e.contains("--header-timeout") && e.contains("0s"), "{e}");
        let none = ServerLimits {
            max_connections: 0,
            ..Default::default()
        };
        assert!(
            none.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-connections must be between 1 and 100000; got 0")
        );
        let absurd = ServerLimits {
            body_timeout: Duration::from_secs(86_400 * 365),
            ..Default::default()
        };
        assert!(
            absurd
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--body-timeout")
        );
        let idle = ServerLimits {
            idle_timeout: Duration::from_secs(20),
            ..Default::default()
        };
        let e = idle.validate().unwrap_err().to_string();
        assert!(
            e.contains("--idle-timeout") && e.contains("--header-timeout"),
            "{e}"
        );
    }
}
