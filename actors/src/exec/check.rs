//! The start-time check of exec tasks: a command that does not exist, is not executable, or whose
//! working directory is missing stops the node before it starts, with a message naming the task
//! and the path, instead of failing its first job.
//!
//! [`resolve`] turns the config's relative paths into absolute ones (`cwd` relative to the config
//! file's directory, a program with a `/` relative to `cwd`, a bare program name looked up on
//! `PATH` as the child would) and then runs [`verify`], which the node runs again on whatever
//! arguments it is given (an embedding program may build them by hand).
//!
//! When the program is a known interpreter (`python3`, `sh`, `node`, ...) and its first argument
//! is not an option, that argument is the script and must be a file too: `["python3",
//! "jobs/analyze.py"]` with a typo in the script's name is caught here as well.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use rustix::fs::{access, Access};

use crate::args::ExecTaskArgs;

/// Interpreters whose first non-option argument is a script file.
const INTERPRETERS: &[&str] = &[
    "python", "python2", "python3", "pypy", "pypy3", "sh", "bash", "dash", "zsh", "ksh", "node",
    "ruby", "perl", "php", "Rscript", "lua", "julia", "tclsh",
];

/// The `PATH` used when the node has none (the child gets the same).
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A task that cannot run: which one, which key (`cwd` or `command`) and why, naming the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tasks.{task:?}.{key}: {message}")]
pub struct CheckError {
    /// The task's name.
    pub task: String,
    /// The config key at fault.
    pub key: &'static str,
    /// What is wrong, with the path.
    pub message: String,
}

impl CheckError {
    fn new(task: &ExecTaskArgs, key: &'static str, message: String) -> CheckError {
        CheckError {
            task: task.name.clone(),
            key,
            message,
        }
    }
}

/// Makes `task`'s paths absolute and checks them. `base_dir` is the config file's directory;
/// `path` is the node's `PATH`.
pub fn resolve(
    mut task: ExecTaskArgs,
    base_dir: &Path,
    path: Option<&OsStr>,
) -> Result<ExecTaskArgs, CheckError> {
    if task.cwd.is_relative() {
        task.cwd = base_dir.join(&task.cwd);
    }
    check_cwd(&task.cwd).map_err(|why| CheckError::new(&task, "cwd", why))?;
    let Some(program) = task.command.first().cloned() else {
        let why =
            "expected a program and its arguments like [\"python3\", \"jobs/analyze.py\"], got []";
        return Err(CheckError::new(&task, "command", why.into()));
    };
    let found = find_program(
        &program,
        &task.cwd,
        path.unwrap_or(OsStr::new(DEFAULT_PATH)),
    )
    .map_err(|why| CheckError::new(&task, "command", why))?;
    task.command[0] = found.to_string_lossy().into_owned();
    verify(&task)?;
    Ok(task)
}

/// Checks resolved arguments: `cwd` is a directory, the program an executable file given by an
/// absolute path, and an interpreter's script a file.
pub fn verify(task: &ExecTaskArgs) -> Result<(), CheckError> {
    check_cwd(&task.cwd).map_err(|why| CheckError::new(task, "cwd", why))?;
    let command = |why| CheckError::new(task, "command", why);
    let program = task.command.first().map(PathBuf::from).unwrap_or_default();
    if !program.is_absolute() {
        return Err(command(format!(
            "expected the program as an absolute path once resolved, got {:?}",
            program.display().to_string()
        )));
    }
    check_executable(&program).map_err(command)?;
    if let Some(script) = script_of(&task.command) {
        let full = task.cwd.join(script);
        if !full.is_file() {
            return Err(command(format!(
                "the script {script:?} is not a file (looked for {})",
                full.display()
            )));
        }
    }
    Ok(())
}

fn check_cwd(cwd: &Path) -> Result<(), String> {
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", cwd.display())),
        Err(e) => Err(format!(
            "{} does not exist or cannot be read ({e})",
            cwd.display()
        )),
    }
}

fn check_executable(program: &Path) -> Result<(), String> {
    match std::fs::metadata(program) {
        Ok(m) if !m.is_file() => return Err(format!("{} is not a file", program.display())),
        Ok(_) => {}
        Err(e) => return Err(format!("{} does not exist ({e})", program.display())),
    }
    access(program, Access::EXEC_OK)
        .map_err(|e| format!("{} is not executable ({e})", program.display()))
}

/// A program with a `/` is a path (relative to `cwd`, where the child starts); a bare name is
/// looked up on `path` like `execvp` would, taking the first executable file.
fn find_program(program: &str, cwd: &Path, path: &OsStr) -> Result<PathBuf, String> {
    if program.contains('/') {
        let full = cwd.join(program);
        check_executable(&full)?;
        return Ok(full);
    }
    if program.is_empty() {
        return Err("expected a program name, got \"\"".into());
    }
    let dirs: Vec<PathBuf> = std::env::split_paths(path).collect();
    dirs.iter()
        .map(|d| d.join(program))
        .find(|p| check_executable(p).is_ok())
        .ok_or_else(|| {
            format!(
                "{program:?} not found as an executable file on PATH ({})",
                path.to_string_lossy()
            )
        })
}

/// The script an interpreter command runs: its first argument when that is not an option.
fn script_of(command: &[String]) -> Option<&str> {
    let program = Path::new(command.first()?).file_name()?.to_str()?;
    let base = program.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let known = INTERPRETERS.contains(&program) || INTERPRETERS.contains(&base);
    let arg = command.get(1)?;
    (known && !arg.starts_with('-')).then_some(arg.as_str())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn task(command: &[&str], cwd: &str) -> ExecTaskArgs {
        ExecTaskArgs {
            name: "t.x".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.into(),
            env: Default::default(),
            inherit_env: vec![],
            max_line_bytes: 1024,
            stderr_tail_bytes: 1024,
        }
    }

    /// Ensures that a relative cwd and program are made absolute and a bare name is found on PATH.
    #[test]
    fn resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("jobs")).unwrap();
        let script = dir.path().join("jobs/run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = resolve(task(&["./run.sh"], "jobs"), dir.path(), None).unwrap();
        assert_eq!(t.cwd, dir.path().join("jobs"));
        assert_eq!(Path::new(&t.command[0]), dir.path().join("jobs/./run.sh"));
        let sh = resolve(task(&["sh", "run.sh"], "jobs"), dir.path(), None).unwrap();
        assert!(Path::new(&sh.command[0]).is_absolute(), "{:?}", sh.command);
    }

    /// Ensures that each broken path is refused naming the task, the key and the path.
    #[test]
    fn broken_paths_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.py");
        std::fs::write(&plain, "print()\n").unwrap();
        let err = |t: ExecTaskArgs| resolve(t, dir.path(), None).unwrap_err().to_string();

        let e = err(task(&["sh"], "nowhere"));
        assert!(
            e.starts_with("tasks.\"t.x\".cwd: ") && e.contains("nowhere"),
            "{e}"
        );
        let e = err(task(&["no-such-program-xyz"], "."));
        assert!(
            e.starts_with("tasks.\"t.x\".command: \"no-such-program-xyz\" not found"),
            "{e}"
        );
        let e = err(task(&["./plain.py"], "."));
        assert!(e.contains("plain.py is not executable"), "{e}");
        let e = err(task(&["./missing.sh"], "."));
        assert!(e.contains("missing.sh does not exist"), "{e}");
        let e = err(task(&["python3", "jobs/typo.py"], "."));
        assert!(
            e.contains("the script \"jobs/typo.py\" is not a file"),
            "{e}"
        );
        let e = err(task(&[], "."));
        assert!(e.contains("got []"), "{e}");
    }

    /// Ensures that only an interpreter's first non-option argument is taken for a script.
    #[test]
    fn scripts_of_interpreters() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            script_of(&c(&["/usr/bin/python3.11", "a.py"])),
            Some("a.py")
        );
        assert_eq!(script_of(&c(&["/bin/sh", "-c", "true"])), None);
        assert_eq!(script_of(&c(&["/usr/bin/python3", "-m", "pkg"])), None);
        assert_eq!(script_of(&c(&["/usr/bin/env", "x"])), None);
        assert_eq!(script_of(&c(&["/opt/tool", "input.csv"])), None);
    }
}
