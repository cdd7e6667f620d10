//! Cron schedules: parsing (croner, UTC, seconds field optional).

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Parses a cron expression: five fields, or six with seconds first; no year field.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("expected a cron expression like \"0 0 2 * * *\" or \"*/5 * * * *\", got {expr:?} ({e})"))
}
