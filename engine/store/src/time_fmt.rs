//! Timestamps as sortable UTC text: `2026-12-01T13:07:28.123Z`.

use time::OffsetDateTime;
use time::macros::format_description;

/// The current time in the store's timestamp format.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

/// The current time in the store's timestamp format and in milliseconds since the Unix epoch
/// (what durations are computed from), of one instant.
pub(crate) fn now_with_millis() -> (String, i64) {
    let t = OffsetDateTime::now_utc();
    (format(t), (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A system time (e.g. a file's mtime) in the store's timestamp format.
pub fn timestamp(t: std::time::SystemTime) -> String {
    format(OffsetDateTime::from(t))
}

pub(crate) fn format(t: OffsetDateTime) -> String {
    let f =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}
