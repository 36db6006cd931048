//! The columns whose text the store parses when it reads a record: JSON and statuses. A value
//! that does not parse is an [`Error::Corrupt`] naming the record being read.

use std::str::FromStr;

use crate::{Error, ParseStatusError, Result};

/// The JSON held by the text column `col`, if it is not NULL.
pub(crate) fn json(
    text: Option<String>,
    col: &str,
    doing: &'static str,
) -> Result<Option<serde_json::Value>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| Error::Corrupt {
            doing,
            message: format!("column {col}: {e}"),
        })
    })
    .transpose()
}

/// A JSON list of strings; NULL, or JSON of another shape, reads as no strings.
pub(crate) fn string_list(
    text: Option<String>,
    col: &str,
    doing: &'static str,
) -> Result<Vec<String>> {
    Ok(json(text, col, doing)?
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default())
}

/// A run's or step's status.
pub(crate) fn status<S>(text: &str, doing: &'static str) -> Result<S>
where
    S: FromStr<Err = ParseStatusError>,
{
    text.parse().map_err(|e: ParseStatusError| Error::Corrupt {
        doing,
        message: e.to_string(),
    })
}
