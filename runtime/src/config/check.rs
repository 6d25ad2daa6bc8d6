//! Validation: turning a stage's raw table into its typed settings while collecting
//! every problem, each with the key path it is about (located in the files later).

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathPart {
    Key(String),
    Index(usize),
}

impl From<&str> for PathPart {
    fn from(k: &str) -> Self {
        PathPart::Key(k.to_string())
    }
}

impl From<usize> for PathPart {
    fn from(i: usize) -> Self {
        PathPart::Index(i)
    }
}

/// `keep.capacity`, `camera[1].fps`.
pub(crate) fn dotted(path: &[PathPart]) -> String {
    let mut out = String::new();
    for part in path {
        match part {
            PathPart::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathPart::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A semantic problem found after deserializing, located later by its key path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub path: Vec<PathPart>,
    pub message: String,
    pub hint: Option<String>,
}

/// Collects problems while a stage validates its table. Keys are relative to the
/// current scope ([`Checker::within`]); messages name the full dotted key.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    pub(crate) problems: Vec<Problem>,
    scope: Vec<PathPart>,
    /// Keys already reported before validation (a wrong type), now at their defaults.
    pub(crate) reported: Vec<Vec<PathPart>>,
}

impl Checker {
    /// Run `f` with `part` appended to the scope (a table or an array item).
    pub(crate) fn within<R>(
        &mut self,
        part: impl Into<PathPart>,
        f: impl FnOnce(&mut Checker) -> R,
    ) -> R {
        self.scope.push(part.into());
        let out = f(self);
        self.scope.pop();
        out
    }

    /// The full path of `key` in the current scope.
    pub(crate) fn path(&self, key: &str) -> Vec<PathPart> {
        let mut path = self.scope.clone();
        if !key.is_empty() {
            path.push(key.into());
        }
        path
    }

    /// The dotted name of `key` in the current scope (`keep.capacity`).
    pub(crate) fn key(&self, key: &str) -> String {
        dotted(&self.path(key))
    }

    /// Whether `key` (in the current scope) was found wrong already: its value is a
    /// stand-in, so a check comparing it with another would report a knock-on.
    pub(crate) fn failed(&self, key: &str) -> bool {
        let path = self.path(key);
        self.problems.iter().any(|p| p.path == path) || self.reported.contains(&path)
    }

    /// Record a problem with `key` (empty: the current table itself).
    pub(crate) fn fail(&mut self, key: &str, message: String, hint: impl Into<Option<String>>) {
        self.problems.push(Problem {
            path: self.path(key),
            message,
            hint: hint.into(),
        });
    }

    /// An integer in `lo..=hi`; on failure records a problem and returns `lo`.
    pub(crate) fn int(&mut self, key: &str, value: i64, lo: i64, hi: i64) -> i64 {
        if (lo..=hi).contains(&value) {
            return value;
        }
        let range = if hi == i64::MAX {
            format!("of at least {lo}")
        } else {
            format!("from {lo} to {hi}")
        };
        let name = self.key(key);
        self.fail(
            key,
            format!("{name} = {value} is out of range"),
            format!("write a whole number {range}"),
        );
        lo
    }

    /// A finite float satisfying `ok`, described by `range` for the hint; on failure
    /// records a problem and returns 0.
    pub(crate) fn float(
        &mut self,
        key: &str,
        value: f64,
        ok: impl Fn(f64) -> bool,
        range: &str,
    ) -> f64 {
        if value.is_finite() && ok(value) {
            return value;
        }
        let name = self.key(key);
        self.fail(
            key,
            format!("{name} = {} is out of range", number(value)),
            format!("write a number {range}"),
        );
        0.0
    }

    /// A fraction from 0 to 1.
    pub(crate) fn unit(&mut self, key: &str, value: f64, example: &str) -> f64 {
        self.float(
            key,
            value,
            |v| (0.0..=1.0).contains(&v),
            &format!("from 0 to 1, e.g. {example}"),
        )
    }
}

/// A number as a message shows it: `1e308`, not its 309 digits.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-6..1e15).contains(&magnitude) {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_carry_their_full_key_path() {
        let mut c = Checker::default();
        assert_eq!(c.within("keep", |c| c.int("capacity", 0, 1, 1024)), 1);
        c.within("camera", |c| {
            c.within(2usize, |c| c.float("fps", -1.0, |v| v >= 0.0, "0 or more"))
        });
        assert_eq!(
            c.within("signals", |c| c.within("blur", |c| c.unit("x", 0.5, "0.5"))),
            0.5
        );
        let paths: Vec<String> = c.problems.iter().map(|p| dotted(&p.path)).collect();
        assert_eq!(paths, ["keep.capacity", "camera[2].fps"]);
        assert_eq!(c.problems[0].message, "keep.capacity = 0 is out of range",);
        assert_eq!(
            c.problems[1].hint.as_deref(),
            Some("write a number 0 or more")
        );
    }
}
