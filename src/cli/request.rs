//! Turns a subcommand into its protocol request object. Only what the CLI adds itself is checked
//! here (`--param` pairs, `--params` JSON); every other value goes to the node as given, so the
//! node's message (which names the field and the choices) is the one people see.

use serde_json::{json, Map, Value};

use super::export::PAGE;
use super::session::Failure;
use super::{ClientCommand, ListArgs, RecordsArgs, SinksAction, SubmitArgs};

/// The request for `cmd` (for `export`, the first page's request).
pub(super) fn build(cmd: &ClientCommand) -> Result<Value, Failure> {
    use ClientCommand as C;
    Ok(match cmd {
        C::Ping => bare("ping"),
        C::Submit(args) => submit(args)?,
        C::Status { id } => json!({"cmd": "status", "job_id": id}),
        C::History { id } => json!({"cmd": "history", "job_id": id}),
        C::List(args) => list(args),
        C::Cancel { id } => json!({"cmd": "cancel", "job_id": id}),
        C::Retry { id } => json!({"cmd": "retry", "job_id": id}),
        C::Why { id } => json!({"cmd": "why", "job_id": id}),
        C::Dlq { limit } => with("dlq", [("limit", limit.map(Value::from))]),
        C::Tree => bare("tree"),
        C::Nodes => bare("nodes"),
        C::Pipelines => bare("pipelines"),
        C::Pause { pipeline } => json!({"cmd": "pause", "pipeline": pipeline}),
        C::Resume { pipeline } => json!({"cmd": "resume", "pipeline": pipeline}),
        C::Stats => bare("stats"),
        C::Records(args) => records(args),
        C::Export { prefix, to: None } => {
            json!({"cmd": "records", "prefix": prefix, "limit": PAGE})
        }
        C::Export {
            prefix,
            to: Some(_),
        } => json!({"cmd": "sink_backfill", "prefix": prefix}),
        C::Schedules => bare("schedules"),
        C::Sinks { action: None } => bare("sinks"),
        C::Sinks {
            action: Some(SinksAction::Backfill { prefix }),
        } => json!({"cmd": "sink_backfill", "prefix": prefix}),
        C::Shutdown { no_drain } => json!({"cmd": "shutdown", "drain": !no_drain}),
    })
}

fn bare(cmd: &str) -> Value {
    json!({ "cmd": cmd })
}

/// `{"cmd": cmd}` plus the fields that are given; absent ones are left to the node's defaults.
fn with<const N: usize>(cmd: &str, fields: [(&str, Option<Value>); N]) -> Value {
    let mut req = Map::new();
    req.insert("cmd".into(), cmd.into());
    for (name, value) in fields {
        if let Some(v) = value {
            req.insert(name.into(), v);
        }
    }
    Value::Object(req)
}

fn submit(args: &SubmitArgs) -> Result<Value, Failure> {
    let params = params(args.params.as_deref(), &args.param)?;
    Ok(with(
        "submit",
        [
            ("job", Some(args.job.clone().into())),
            (
                "params",
                (!params.is_empty()).then_some(Value::Object(params)),
            ),
            ("priority", args.priority.clone().map(Value::from)),
            ("unique_key", args.unique_key.clone().map(Value::from)),
            ("max_retries", args.max_retries.map(Value::from)),
            ("delay", args.delay.clone().map(Value::from)),
            ("run_at", args.run_at.clone().map(Value::from)),
        ],
    ))
}

fn list(args: &ListArgs) -> Value {
    with(
        "list",
        [
            ("status", args.status.clone().map(Value::from)),
            ("name", args.name.clone().map(Value::from)),
            ("limit", args.limit.map(Value::from)),
            ("before", args.before.clone().map(Value::from)),
        ],
    )
}

fn records(args: &RecordsArgs) -> Value {
    with(
        "records",
        [
            ("prefix", Some(args.prefix.clone().into())),
            ("limit", args.limit.map(Value::from)),
            ("after", args.after.clone().map(Value::from)),
        ],
    )
}

/// The params object: `--params` (a JSON object) with each `--param KEY=VALUE` set over it.
pub(super) fn params(
    object: Option<&str>,
    pairs: &[String],
) -> Result<Map<String, Value>, Failure> {
    let mut params = match object {
        None => Map::new(),
        Some(text) => params_object(text)?,
    };
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| {
                Failure::Usage(format!(
                    "--param: expected KEY=VALUE like ticker=CHGG, got {pair:?}"
                ))
            })?;
        params.insert(key.to_string(), param_value(value));
    }
    Ok(params)
}

fn params_object(text: &str) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Failure::Usage(format!(
            "--params: expected a JSON object like '{{\"ticker\":\"CHGG\"}}', got {text:?}"
        ))),
        Err(e) => Err(Failure::Usage(format!(
            "--params: not valid JSON ({e}), got {text:?}"
        ))),
    }
}

/// JSON when it parses, so `n=3` is a number and `tags=["a"]` an array; otherwise the text
/// itself, so `ticker=CHGG` needs no quoting.
fn param_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Ensures that `--param` values are JSON when they parse and strings otherwise.
    #[test]
    fn param_values_are_json_or_strings() {
        let p = params(
            None,
            &strings(&[
                "ticker=CHGG",
                "n=3",
                "ok=true",
                "tags=[1,2]",
                "id=0123",
                "e=",
            ]),
        )
        .unwrap();
        assert_eq!(
            Value::Object(p),
            json!({"ticker": "CHGG", "n": 3, "ok": true, "tags": [1, 2], "id": "0123", "e": ""})
        );
    }

    /// Ensures that `--param` overrides the keys of `--params` and keeps the others.
    #[test]
    fn param_overrides_params_object() {
        let p = params(
            Some(r#"{"ticker":"AAPL","years":2}"#),
            &strings(&["ticker=CHGG"]),
        )
        .unwrap();
        assert_eq!(Value::Object(p), json!({"ticker": "CHGG", "years": 2}));
    }

    /// Ensures that malformed `--param` and `--params` are refused naming the flag.
    #[test]
    fn bad_params_name_the_flag() {
        let msg = |r: Result<Map<String, Value>, Failure>| match r {
            Err(Failure::Usage(m)) => m,
            other => panic!("expected a usage failure, got {other:?}"),
        };
        assert!(msg(params(None, &strings(&["novalue"]))).starts_with("--param:"));
        assert!(msg(params(None, &strings(&["=x"]))).starts_with("--param:"));
        assert!(msg(params(Some("[1]"), &[])).starts_with("--params: expected a JSON object"));
        assert!(msg(params(Some("{nope"), &[])).starts_with("--params: not valid JSON"));
    }

    /// Ensures that absent options are left out, so the node applies its defaults.
    #[test]
    fn absent_fields_are_left_out() {
        let args = ListArgs {
            status: Some("failed".into()),
            name: None,
            limit: Some(5),
            before: None,
        };
        assert_eq!(
            list(&args),
            json!({"cmd": "list", "status": "failed", "limit": 5})
        );
        let shutdown = build(&ClientCommand::Shutdown { no_drain: true }).unwrap();
        assert_eq!(shutdown, json!({"cmd": "shutdown", "drain": false}));
    }
}
