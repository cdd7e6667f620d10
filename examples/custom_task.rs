//! A complete node with one task written in Rust: `reports.word_count {text}` counts words,
//! reports its progress, stores one record per word (`words/{word}`) and returns the counts.
//! It runs under the same supervision, retries, limits, journal and admin port as the built-in
//! tasks; the `reports` pipeline it lands in starts with default settings.
//!
//! ```sh
//! cargo run --example custom_task                      # a node on the embedded default config
//! cargo run --example custom_task -- config/my.toml    # or on a config file
//! warden submit reports.word_count --params '{"text":"to be or not to be"}' --wait
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use warden::config::Config;
use warden::task::{TaskCtx, TaskError, TaskResult};

/// The task: words in, one record per word, the counts out.
pub async fn word_count(ctx: TaskCtx) -> TaskResult {
    let text = ctx.params["text"].as_str().ok_or_else(|| {
        // Bad params never get better: permanent, dead-lettered at once.
        TaskError::Permanent(format!(
            "{}: params.text: expected a string, got {}",
            ctx.name, ctx.params["text"]
        ))
    })?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let total = counts.len() as u64;
    for (done, (word, n)) in counts.iter().enumerate() {
        if ctx.cancel.is_cancelled() {
            return Err(TaskError::Permanent(format!("{}: cancelled", ctx.name)));
        }
        // Keyed by the word: a re-run overwrites instead of duplicating (a store error is
        // transient and retried).
        ctx.records
            .put(&format!("words/{word}"), &json!({ "count": n }))?;
        ctx.progress
            .report(done as u64 + 1, Some(total), Some(word.as_str()));
    }
    Ok(json!({ "words": total, "counts": counts }))
}

/// The node: `config` plus the task.
pub fn builder(config: Config) -> warden::NodeBuilder {
    warden::Node::builder(config).task("reports.word_count", word_count)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let config = match std::env::args().nth(1) {
        Some(path) => Config::from_file(Path::new(&path)).map_err(|e| e.to_string())?,
        None => Config::embedded_default(),
    };
    let node = builder(config).start().await.map_err(|e| e.to_string())?;
    eprintln!(
        "node on {}; try: warden submit reports.word_count --params '{{\"text\":\"to be or not to be\"}}' --wait",
        node.admin_addr()
    );
    node.run(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| e.to_string())
}
