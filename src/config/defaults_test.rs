//! Checks that `config/default.toml` shows every key of the schema. Keys with a default are
//! written with it (`embedded_default_parses` in the parent's tests compares them with the
//! `Default` impls); keys and sections whose default is "unset" are commented-out examples.
//! Here the examples are uncommented and must form a valid config that sets every one of those
//! keys. The sections are destructured without `..`, so a key added to the schema does not
//! compile here until it is looked at.

use super::*;

/// Whether a comment's text is a commented-out example: a table header or `key = value`.
/// Prose never starts that way (`# Ingestion workers, 1 ..= 1024.` has no bare key before `=`).
fn is_example(text: &str) -> bool {
    let text = text.trim_start();
    text.starts_with('[')
        || text.split_once('=').is_some_and(|(key, _)| {
            let key = key.trim();
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// `config/default.toml` with every commented-out example uncommented.
fn uncommented() -> String {
    DEFAULT_TOML
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(text) if is_example(text) => text.trim_start(),
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn with_examples() -> Config {
    Config::from_str(&uncommented(), "config/default.toml, uncommented")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The optional keys of one pipeline section, and whether each is set.
fn pipeline_keys(p: &PipelineSection) -> [(&'static str, bool); 12] {
    let PipelineSection {
        workers: _,
        retry: _,
        restart: _,
        base_url,
        tickers_url,
        user_agent,
        rate_limit,
        request_timeout,
        breaker,
        api_key_env,
        throttle_cooldown,
        time_limit,
        soft_time_limit,
        max_jobs_per_worker,
        tasks,
    } = p;
    [
        ("base_url", base_url.is_some()),
        ("tickers_url", tickers_url.is_some()),
        ("user_agent", user_agent.is_some()),
        ("rate_limit", rate_limit.is_some()),
        ("request_timeout", request_timeout.is_some()),
        ("breaker", breaker.is_some()),
        ("api_key_env", api_key_env.is_some()),
        ("throttle_cooldown", throttle_cooldown.is_some()),
        ("time_limit", time_limit.is_some()),
        ("soft_time_limit", soft_time_limit.is_some()),
        ("max_jobs_per_worker", max_jobs_per_worker.is_some()),
        ("tasks", !tasks.is_empty()),
    ]
}

/// Ensures that the commented-out examples of default.toml, uncommented, are a valid config
/// that starts every pipeline and sets every optional pipeline key somewhere.
#[test]
fn examples_set_every_pipeline_key() {
    let config = with_examples();
    let names: Vec<&str> = config.pipelines.keys().map(String::as_str).collect();
    assert_eq!(names, ["alphavantage", "builtin", "sec", "yahoo"]);
    let keys: Vec<_> = config.pipelines.values().map(pipeline_keys).collect();
    for (i, (key, _)) in keys[0].iter().enumerate() {
        assert!(
            keys.iter().any(|k| k[i].1),
            "config/default.toml: no pipeline example sets {key}"
        );
    }
    let builtin = &config.pipelines[BUILTIN_PIPELINE];
    let [(task, limits)] = Vec::from_iter(&builtin.tasks)[..] else {
        panic!(
            "expected one task in the tasks example, got {:?}",
            builtin.tasks
        )
    };
    let TaskLimitsSection {
        time_limit,
        soft_time_limit,
    } = limits;
    assert_eq!(task, "builtin.sleep");
    assert!(time_limit.is_some() && soft_time_limit.is_some());
    assert_eq!(
        config.pipelines["sec"].breaker,
        Some(BreakerSection::default()),
        "the breaker example shows the defaults"
    );
}

/// Ensures that the examples show `[admin] token`, a route, `[universe]`, a schedule with every
/// key, and `[alerts]` with its defaults.
#[test]
fn examples_show_the_optional_sections() {
    let config = with_examples();
    assert!(config.admin.token.is_some(), "no [admin] token example");
    let [RouteSection {
        pattern: _,
        pipeline,
        priority,
    }] = &config.routes[..]
    else {
        panic!("expected one route example, got {:?}", config.routes)
    };
    assert!(pipeline.is_some() && priority.is_some());
    let UniverseSection { tickers } = &config.universe;
    assert!(!tickers.is_empty(), "no [universe] tickers example");
    let [ScheduleSection {
        name: _,
        cron: _,
        job: _,
        params,
        priority,
        catch_up,
        overlap,
    }] = &config.schedules[..]
    else {
        panic!("expected one schedule example, got {:?}", config.schedules)
    };
    assert!(params.is_some() && priority.is_some() && catch_up.is_some() && overlap.is_some());
    let Some(AlertsSection {
        webhook_url,
        queue: _,
        max_attempts: _,
        timeout: _,
    }) = &config.alerts
    else {
        panic!("no [alerts] example")
    };
    let only_url = format!("[alerts]\nwebhook_url = {webhook_url:?}\n");
    let defaults = Config::from_str(&only_url, "only webhook_url").expect("valid [alerts]");
    assert_eq!(
        config.alerts, defaults.alerts,
        "the [alerts] example shows the defaults"
    );
}

/// Ensures that the examples show `[sinks.postgres]` with every key, the optional ones at
/// their defaults.
#[test]
fn examples_show_the_postgres_sink() {
    let config = with_examples();
    let Some(PostgresSinkSection {
        url,
        url_env,
        schema: _,
        batch: _,
        flush_every: _,
        max_backoff: _,
        timeout: _,
    }) = &config.sinks.postgres
    else {
        panic!("no [sinks.postgres] example")
    };
    assert!(url.is_some() && url_env.is_some());
    let only_url = format!(
        "[sinks.postgres]\nurl = {:?}\nurl_env = {:?}\n",
        url.as_deref().unwrap_or_default(),
        url_env.as_deref().unwrap_or_default()
    );
    let defaults = Config::from_str(&only_url, "only url").expect("valid [sinks.postgres]");
    assert_eq!(
        config.sinks, defaults.sinks,
        "the [sinks.postgres] example shows the defaults"
    );
}

/// Ensures that the examples show an exec task that sets every key of `[tasks."<name>"]`.
#[test]
fn examples_show_an_exec_task() {
    let config = with_examples();
    let [(name, task)] = Vec::from_iter(&config.tasks)[..] else {
        panic!("expected one exec task example, got {:?}", config.tasks)
    };
    let TaskSection {
        pipeline,
        command,
        cwd,
        env,
        inherit_env,
        max_line_bytes,
        stderr_tail_bytes,
        time_limit,
        soft_time_limit,
    } = task;
    assert_eq!(name, "filing.analyze");
    assert!(pipeline.is_some() && !command.is_empty() && cwd.is_some());
    assert!(!env.is_empty() && !inherit_env.is_empty());
    assert_eq!(
        (*max_line_bytes, *stderr_tail_bytes),
        (
            Some(warden_actors::args::ExecTaskArgs::DEFAULT_MAX_LINE_BYTES),
            Some(warden_actors::args::ExecTaskArgs::DEFAULT_STDERR_TAIL_BYTES)
        ),
        "the examples show the defaults"
    );
    assert!(time_limit.is_some() && soft_time_limit.is_some());
}

/// Ensures that the example detector takes keys and headers and leaves prose alone.
#[test]
fn examples_are_told_from_prose() {
    assert!(is_example(" [pipelines.sec]"));
    assert!(is_example(" max_jobs_per_worker = 10000"));
    assert!(is_example(" token = \"change-me\""));
    assert!(!is_example(" Ingestion workers, 1 ..= 1024."));
    assert!(!is_example(
        " also takes the keys of [pipelines.builtin] above."
    ));
    assert!(!is_example(""));
}

/// Ensures that `[console]` in default.toml spells out every key of the section with its
/// default (destructured without `..`, so a new key does not compile here until it is shown).
#[test]
fn console_section_shows_every_key() {
    let ConsoleSection {
        enabled,
        listen,
        read_only,
        refresh,
        allowed_hosts,
    } = Config::embedded_default().console;
    assert!(enabled && !read_only && allowed_hosts.is_empty());
    assert_eq!(listen, "127.0.0.1:7072".parse().unwrap());
    assert_eq!(refresh, Duration::from_secs(3));
    for key in ["enabled", "listen", "read_only", "refresh", "allowed_hosts"] {
        assert!(
            DEFAULT_TOML.contains(&format!("\n{key} = ")),
            "config/default.toml: [console] does not show {key}"
        );
    }
}
