//! Routing: which pipeline runs a job name, and at which default priority. Rules are globs
//! tried in order (`[[routes]] match = "sec.*"`); without a matching rule (or when the rule
//! names no pipeline) a job goes to the pipeline named before its first dot.

use globset::{Glob, GlobMatcher};

use crate::args::RouteArgs;
use crate::job::Priority;

/// Compiled routing rules.
#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<(GlobMatcher, RouteArgs)>,
}

/// Where a job name goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The pipeline's name.
    pub pipeline: String,
    /// The default priority for it.
    pub priority: Priority,
}

impl Router {
    /// Compiles the rules; an invalid glob is an error naming it.
    pub fn new(routes: &[RouteArgs]) -> Result<Self, String> {
        let rules = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Glob::new(&r.pattern)
                    .map(|g| (g.compile_matcher(), r.clone()))
                    .map_err(|e| {
                        format!(
                            "routes[{i}].match: expected a glob like \"sec.*\", got {:?} ({e})",
                            r.pattern
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// The route of a job name.
    pub fn route(&self, name: &str) -> Route {
        let default_pipeline = name.split('.').next().unwrap_or(name).to_string();
        let mut route = Route {
            pipeline: default_pipeline,
            priority: Priority::Normal,
        };
        if let Some((_, rule)) = self.rules.iter().find(|(m, _)| m.is_match(name)) {
            if let Some(p) = &rule.pipeline {
                route.pipeline = p.clone();
            }
            if let Some(p) = rule.priority {
                route.priority = p;
            }
        }
        route
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that the first matching rule decides and unmatched names go by their prefix.
    #[test]
    fn first_match_wins_else_prefix() {
        let r = Router::new(&[
            RouteArgs {
                pattern: "builtin.sleep".into(),
                pipeline: None,
                priority: Some(Priority::Low),
            },
            RouteArgs {
                pattern: "builtin.*".into(),
                pipeline: Some("other".into()),
                priority: Some(Priority::High),
            },
        ])
        .unwrap();
        assert_eq!(
            r.route("builtin.sleep"),
            Route {
                pipeline: "builtin".into(),
                priority: Priority::Low
            }
        );
        assert_eq!(
            r.route("builtin.noop"),
            Route {
                pipeline: "other".into(),
                priority: Priority::High
            }
        );
        assert_eq!(
            r.route("sec.filings"),
            Route {
                pipeline: "sec".into(),
                priority: Priority::Normal
            }
        );
    }

    /// Ensures that a broken glob is reported with its index and text.
    #[test]
    fn bad_glob_is_named() {
        let e = Router::new(&[RouteArgs {
            pattern: "sec.[".into(),
            pipeline: None,
            priority: None,
        }])
        .unwrap_err();
        assert!(e.starts_with("routes[0].match: expected a glob"), "{e}");
    }
}
