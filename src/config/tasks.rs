//! `[tasks."<name>"]`: exec tasks declared in the config (docs/tasks.md), and where every task
//! that is not built in (exec tasks and the Rust tasks of `warden::Node::builder`) is placed.
//!
//! A task runs in the pipeline its `pipeline` key names; without one, where routing sends its
//! name (the first `[[routes]]` rule that matches, else the part before the first dot), as for
//! any job. A pipeline that only such tasks name needs no section of its own: it starts with the
//! defaults of `[pipelines.builtin]`. When `pipeline` differs from where routing would send the
//! name, an exact route is put in front of the configured ones (keeping the priority the first
//! matching rule gives), so submits of that name reach it.
//!
//! Paths are resolved here, relative to the config file's directory, and checked
//! ([`warden_actors::exec::check`]): a node whose task cannot run does not start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use warden_actors::args::{ExecTaskArgs, RouteArgs, TimeLimits};
use warden_actors::exec::check;
use warden_actors::tasks::TaskSet;

use super::{opt_duration, Config, PipelineSection, Problem, RouteSection, KNOWN_PIPELINES};

/// Longest task name.
const MAX_NAME: usize = 128;
/// Bounds of `max_line_bytes`: a record needs room; more than this is one line no one meant.
const LINE_BYTES: (usize, usize) = (1024, 64 << 20);
/// Upper bound of `stderr_tail_bytes` (it ends up in the job's error, in the journal).
const MAX_TAIL_BYTES: usize = 1 << 20;

/// `[tasks."<name>"]`: one exec task.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// The pipeline that runs it; default: where routing sends its name.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// The program and its arguments (no shell), such as `["python3", "jobs/analyze.py"]`.
    pub command: Vec<String>,
    /// The working directory, relative to the config file; default the config file's directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Variables added to the task's minimal environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables of the node's own environment passed on when set there (secrets, proxies).
    #[serde(default)]
    pub inherit_env: Vec<String>,
    /// Longest stdout line, in bytes; default 1 MiB.
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
    /// Bytes of stderr kept per attempt and put in the job's error; default 64 KiB.
    #[serde(default)]
    pub stderr_tail_bytes: Option<usize>,
    /// Hard time limit of one attempt (as `pipelines.<p>.tasks`); default the pipeline's.
    #[serde(default, deserialize_with = "opt_duration")]
    pub time_limit: Option<Duration>,
    /// Soft time limit: SIGTERM to the task's process group; default the pipeline's.
    #[serde(default, deserialize_with = "opt_duration")]
    pub soft_time_limit: Option<Duration>,
}

/// The tasks of one pipeline that are not built in.
#[derive(Debug, Default)]
pub(super) struct Own {
    /// Exec tasks, paths resolved.
    pub exec: Vec<ExecTaskArgs>,
    /// Rust tasks of an embedding program.
    pub custom: TaskSet,
    /// Time limits set in `[tasks."<name>"]`.
    pub limits: Vec<(String, TimeLimits)>,
}

/// Every task that is not built in, by pipeline, and the routes they need.
#[derive(Debug, Default)]
pub(super) struct OwnTasks {
    /// By pipeline name.
    pub pipelines: BTreeMap<String, Own>,
    /// Exact routes, to put in front of the configured ones.
    pub routes: Vec<RouteArgs>,
}

impl Config {
    /// Places the exec tasks and `custom`, resolves and checks the exec tasks' paths, starts
    /// the pipelines they name that have no section, and refuses a pipeline left with no task.
    pub(super) fn own_tasks(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        custom: TaskSet,
    ) -> Result<OwnTasks, Problem> {
        let base = self.base_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        let base = std::env::current_dir().map_or(base.clone(), |d| d.join(&base));
        let path = env("PATH");
        let mut own = OwnTasks::default();
        for (name, t) in &self.tasks {
            let key = format!("tasks.{name:?}");
            let placed = place(name, t.pipeline.as_deref(), &self.routes, &key)?;
            let mine = own.pipelines.entry(placed.pipeline.clone()).or_default();
            mine.exec.push(resolve(name, t, &base, path.as_deref())?);
            if let Some(l) = limits(t) {
                if self
                    .pipelines
                    .get(&placed.pipeline)
                    .is_some_and(|p| p.tasks.contains_key(name))
                {
                    return Err(Problem::new(
                        format!("{key}.time_limit"),
                        format!(
                            "expected the limits in one place, got them here and in \
                             pipelines.{}.tasks",
                            placed.pipeline
                        ),
                    ));
                }
                mine.limits.push((name.clone(), l));
            }
            own.routes.extend(placed.route);
        }
        for name in custom.names() {
            let key = format!("task {name:?} of the node builder");
            if let Some(why) = name_problem(name).or_else(|| {
                self.tasks
                    .contains_key(name)
                    .then(|| "also declared in [tasks]".to_string())
            }) {
                return Err(Problem::new(key, why));
            }
            let Some(f) = custom.get(name).cloned() else {
                continue;
            };
            let placed = place(name, None, &self.routes, &key)?;
            let mine = own.pipelines.entry(placed.pipeline).or_default();
            mine.custom = std::mem::take(&mut mine.custom).with(name, f);
        }
        self.start_task_pipelines(&own)?;
        Ok(own)
    }

    /// Adds a default section for each pipeline only tasks name; refuses an upstream pipeline
    /// named that way (it needs its own keys) and a pipeline with nothing to run.
    fn start_task_pipelines(&mut self, own: &OwnTasks) -> Result<(), Problem> {
        for p in own.pipelines.keys() {
            if self.pipelines.contains_key(p) {
                continue;
            }
            if KNOWN_PIPELINES.contains(&p.as_str()) {
                return Err(Problem::new(
                    format!("pipelines.{p}"),
                    format!("tasks run on the {p} pipeline, which is not configured: add [pipelines.{p}]"),
                ));
            }
            if let Some(why) = super::pipeline_name_problem(p) {
                return Err(Problem::new(format!("pipelines.{p}"), why));
            }
            self.pipelines.insert(p.clone(), PipelineSection::default());
        }
        let empty = self.pipelines.keys().find(|p| {
            !KNOWN_PIPELINES.contains(&p.as_str()) && !own.pipelines.contains_key(p.as_str())
        });
        match empty {
            Some(p) => Err(Problem::new(
                format!("pipelines.{p}"),
                format!(
                    "no tasks run on it: expected one of the built-in pipelines ({}) or a \
                     pipeline some task names (tasks.\"<name>\".pipeline = {p:?}, or a task named \
                     \"{p}.<something>\")",
                    KNOWN_PIPELINES.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }
}

/// Where a task runs, and the route that sends its name there when routing alone would not.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Placed {
    /// The pipeline.
    pub pipeline: String,
    /// An exact route to put in front of the configured ones.
    pub route: Option<RouteArgs>,
}

/// Checks a task name: letters, digits, `.`, `_`, `-`, at most [`MAX_NAME`] bytes.
pub(super) fn name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    (!ok).then(|| {
        format!(
            "expected a job name of letters, digits, '.', '_' and '-' (at most {MAX_NAME}) like \
             \"filing.analyze\", got {name:?}"
        )
    })
}

/// The rules [`Config::validate`](super::Config) checks for each `[tasks."<name>"]`.
pub(super) fn validate(
    name: &str,
    t: &TaskSection,
    routes: &[RouteSection],
) -> Result<(), Problem> {
    let key = format!("tasks.{name:?}");
    if let Some(why) = name_problem(name) {
        return Err(Problem::new(&key, why));
    }
    if t.command.first().is_none_or(|p| p.is_empty()) {
        return Err(Problem::new(
            format!("{key}.command"),
            format!(
                "expected a program and its arguments like [\"python3\", \"jobs/analyze.py\"], got {:?}",
                t.command
            ),
        ));
    }
    for (var, value) in &t.env {
        if var.is_empty() || var.contains(['=', '\0']) || value.contains('\0') {
            return Err(Problem::new(
                format!("{key}.env"),
                format!("expected variable names without '=' and values without NUL, got {var:?}"),
            ));
        }
    }
    if let Some(var) = t
        .inherit_env
        .iter()
        .find(|v| v.is_empty() || v.contains(['=', '\0']))
    {
        return Err(Problem::new(
            format!("{key}.inherit_env"),
            format!("expected variable names like \"AWS_PROFILE\", got {var:?}"),
        ));
    }
    if let Some(n) = t
        .max_line_bytes
        .filter(|n| !(LINE_BYTES.0..=LINE_BYTES.1).contains(n))
    {
        return Err(Problem::new(
            format!("{key}.max_line_bytes"),
            format!("expected {} ..= {}, got {n}", LINE_BYTES.0, LINE_BYTES.1),
        ));
    }
    if let Some(n) = t.stderr_tail_bytes.filter(|n| *n > MAX_TAIL_BYTES) {
        return Err(Problem::new(
            format!("{key}.stderr_tail_bytes"),
            format!("expected at most {MAX_TAIL_BYTES}, got {n}"),
        ));
    }
    if let (Some(soft), Some(hard)) = (t.soft_time_limit, t.time_limit) {
        if soft >= hard {
            return Err(Problem::new(
                format!("{key}.soft_time_limit"),
                format!(
                    "expected less than time_limit ({}), got {}",
                    humantime::format_duration(hard),
                    humantime::format_duration(soft)
                ),
            ));
        }
    }
    place(name, t.pipeline.as_deref(), routes, &key).map(|_| ())
}

/// Where task `name` runs; `explicit` is its `pipeline` key. An explicit pipeline that a
/// matching route contradicts is an error: the config would say two things.
pub(super) fn place(
    name: &str,
    explicit: Option<&str>,
    routes: &[RouteSection],
    key: &str,
) -> Result<Placed, Problem> {
    let first = routes.iter().enumerate().find(|(_, r)| {
        globset::Glob::new(&r.pattern).is_ok_and(|g| g.compile_matcher().is_match(name))
    });
    let prefix = name.split('.').next().unwrap_or(name);
    let routed = first
        .and_then(|(_, r)| r.pipeline.as_deref())
        .unwrap_or(prefix);
    let Some(explicit) = explicit else {
        return Ok(Placed {
            pipeline: routed.to_string(),
            route: None,
        });
    };
    if let Some((i, r)) =
        first.filter(|(_, r)| r.pipeline.as_deref().is_some_and(|p| p != explicit))
    {
        return Err(Problem::new(
            format!("{key}.pipeline"),
            format!(
                "expected the pipeline routes[{i}] ({:?}) sends this name to, {:?}, or no \
                 pipeline key, got {explicit:?}",
                r.pattern,
                r.pipeline.as_deref().unwrap_or_default()
            ),
        ));
    }
    let route = (routed != explicit).then(|| RouteArgs {
        pattern: name.to_string(),
        pipeline: Some(explicit.to_string()),
        priority: first.and_then(|(_, r)| r.priority),
    });
    Ok(Placed {
        pipeline: explicit.to_string(),
        route,
    })
}

/// The task's arguments, paths resolved against `base_dir` and checked.
pub(super) fn resolve(
    name: &str,
    t: &TaskSection,
    base_dir: &Path,
    path: Option<&str>,
) -> Result<ExecTaskArgs, Problem> {
    let args = ExecTaskArgs {
        name: name.to_string(),
        command: t.command.clone(),
        cwd: t.cwd.clone().unwrap_or_else(|| PathBuf::from(".")),
        env: t.env.clone(),
        inherit_env: t.inherit_env.clone(),
        max_line_bytes: t
            .max_line_bytes
            .unwrap_or(ExecTaskArgs::DEFAULT_MAX_LINE_BYTES),
        stderr_tail_bytes: t
            .stderr_tail_bytes
            .unwrap_or(ExecTaskArgs::DEFAULT_STDERR_TAIL_BYTES),
    };
    check::resolve(args, base_dir, path.map(std::ffi::OsStr::new))
        .map_err(|e| Problem::new(format!("tasks.{:?}.{}", e.task, e.key), e.message))
}

/// The task's own time limits, when it sets any.
pub(super) fn limits(t: &TaskSection) -> Option<TimeLimits> {
    let l = TimeLimits {
        soft: t.soft_time_limit,
        hard: t.time_limit,
    };
    (!l.is_none()).then_some(l)
}

#[cfg(test)]
mod tests {
    use warden_actors::job::Priority;

    use super::*;

    fn route(pattern: &str, pipeline: Option<&str>, priority: Option<Priority>) -> RouteSection {
        RouteSection {
            pattern: pattern.into(),
            pipeline: pipeline.map(String::from),
            priority,
        }
    }

    /// Ensures that a task goes where routing sends its name unless it names a pipeline, and
    /// that an explicit pipeline gets an exact route carrying the matching rule's priority.
    #[test]
    fn placement_follows_routing() {
        let routes = [route("filing.*", None, Some(Priority::Low))];
        let p = place("filing.analyze", None, &routes, "k").unwrap();
        assert_eq!((p.pipeline.as_str(), p.route), ("filing", None));
        let p = place("filing.analyze", Some("analysis"), &routes, "k").unwrap();
        assert_eq!(p.pipeline, "analysis");
        let r = p.route.unwrap();
        assert_eq!(r.pattern, "filing.analyze");
        assert_eq!(
            (r.pipeline.as_deref(), r.priority),
            (Some("analysis"), Some(Priority::Low))
        );
        let p = place("analysis.run", Some("analysis"), &[], "k").unwrap();
        assert_eq!(p.route, None, "routing already sends it there");
    }

    /// Ensures that a pipeline key contradicting a matching route is refused, naming both.
    #[test]
    fn contradicting_route_is_named() {
        let routes = [route("filing.*", Some("slow"), None)];
        let e = place(
            "filing.analyze",
            Some("analysis"),
            &routes,
            "tasks.\"filing.analyze\"",
        )
        .unwrap_err();
        assert_eq!(e.key, "tasks.\"filing.analyze\".pipeline");
        assert!(
            e.message.contains("routes[0]") && e.message.contains("\"slow\""),
            "{}",
            e.message
        );
    }

    /// Ensures that each rule of a task section is checked, naming the key.
    #[test]
    fn task_sections_are_validated() {
        let err = |text: &str| {
            Config::from_str(text, "t.toml")
                .expect_err("refused")
                .to_string()
        };
        let e = err("[tasks.\"a b\"]\ncommand = [\"true\"]\n");
        assert!(
            e.starts_with("t.toml: tasks.\"a b\": expected a job name"),
            "{e}"
        );
        let e = err("[tasks.\"x.y\"]\ncommand = []\n");
        assert!(
            e.starts_with("t.toml: tasks.\"x.y\".command: expected a program"),
            "{e}"
        );
        let e = err("[tasks.\"x.y\"]\ncommand = [\"true\"]\nenv = { \"A=B\" = \"1\" }\n");
        assert!(e.starts_with("t.toml: tasks.\"x.y\".env: "), "{e}");
        let e = err("[tasks.\"x.y\"]\ncommand = [\"true\"]\nmax_line_bytes = 10\n");
        assert!(
            e.contains("tasks.\"x.y\".max_line_bytes: expected 1024 ..= 67108864, got 10"),
            "{e}"
        );
        let e = err("[tasks.\"x.y\"]\ncommand = [\"true\"]\ntime_limit = \"1s\"\nsoft_time_limit = \"2s\"\n");
        assert!(
            e.contains("tasks.\"x.y\".soft_time_limit: expected less than time_limit"),
            "{e}"
        );
        let e = err("[tasks.\"x.y\"]\ncommand = [\"true\"]\nshell = true\n");
        assert!(e.contains("unknown field `shell`"), "{e}");
    }

    /// Ensures that task names are checked.
    #[test]
    fn names_are_checked() {
        assert_eq!(name_problem("filing.analyze"), None);
        assert!(name_problem("").is_some());
        assert!(name_problem("a b").is_some());
        assert!(name_problem("x*").is_some());
    }

    /// Ensures that an exec task reaches the pipeline it names (started with defaults), its
    /// paths resolved against the config file's directory, its limits and its route set.
    #[test]
    fn exec_tasks_reach_their_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("jobs")).unwrap();
        std::fs::write(dir.path().join("jobs/run.sh"), "exit 0\n").unwrap();
        let file = dir.path().join("node.toml");
        let text = "[tasks.\"filing.analyze\"]\npipeline = \"analysis\"\n\
                    command = [\"sh\", \"run.sh\"]\ncwd = \"jobs\"\ntime_limit = \"1m\"\n";
        std::fs::write(&file, text).unwrap();
        let args = Config::from_file(&file)
            .unwrap()
            .into_args("t", &|v| std::env::var(v).ok())
            .unwrap();
        let p = args
            .pipelines
            .iter()
            .find(|p| p.name == "analysis")
            .unwrap();
        assert_eq!(p.workers, 4, "started with the defaults");
        let t = &p.exec[0];
        assert_eq!(t.cwd, dir.path().join("jobs"));
        assert!(Path::new(&t.command[0]).is_absolute(), "{:?}", t.command);
        assert_eq!(
            p.task_limits["filing.analyze"].hard,
            Some(Duration::from_secs(60))
        );
        assert_eq!(args.routes[0].pattern, "filing.analyze");
        assert_eq!(args.routes[0].pipeline.as_deref(), Some("analysis"));
    }

    /// Ensures that a task on an unconfigured upstream pipeline is refused, naming it.
    #[test]
    fn upstream_pipelines_need_their_section() {
        let config =
            Config::from_str("[tasks.\"sec.extra\"]\ncommand = [\"true\"]\n", "t").unwrap();
        let e = config
            .into_args("t", &|v| std::env::var(v).ok())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pipelines.sec: tasks run on the sec pipeline, which is not configured"),
            "{e}"
        );
    }
}
