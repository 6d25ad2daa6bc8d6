//! Config errors a field engineer can act on: file, line, column, what is wrong and what
//! to write instead.

use std::fmt;

use super::DEFAULT_CONFIG_TOML;

/// Every problem found in the config files of one load, in file and line order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

/// One problem, at a 1-based line and column of `file` (0 when the position is unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {}: ", d.file)?;
            if d.line > 0 {
                write!(f, "line {}, column {}: ", d.line, d.column)?;
            }
            write!(f, "{}", d.message)?;
            if let Some(hint) = &d.hint {
                write!(f, "; {hint}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Tables the config once had, with where their keys went.
const RENAMED_TABLES: [(&str, &str); 1] = [(
    "scoring",
    "[scoring] is now [policy] (min_value, reason_level) and one [signals.<name>] table per signal (uncertainty: band, weight; margin: weight; blur: threshold, weight); `framesift config default` shows them",
)];

/// Where credentials go instead of the config.
pub(crate) const SECRET_HINT: &str = "credentials never go in the config: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the daemon's environment (systemd: an EnvironmentFile= in a drop-in), or put them in an AWS credentials file and name it with upload.credentials_file";

/// Turn a serde message about the key at `path` into a message and a hint.
pub(crate) fn explain(message: &str, path: &str) -> (String, Option<String>) {
    let message = message.trim();
    let (table, key_name) = match path.rsplit_once('.') {
        Some((table, k)) => (Some(table), k),
        None => (None, path),
    };
    // `in [keep]`, but `in camera[0]`: an item of a list is not a table header.
    let within = table.map_or("at the top level".to_string(), |t| {
        if t.contains('[') {
            format!("in {t}")
        } else {
            format!("in [{t}]")
        }
    });
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, expected) = split_expected(rest);
        let renamed = table
            .is_none()
            .then(|| RENAMED_TABLES.iter().find(|(old, _)| *old == unknown))
            .flatten();
        let secret = table == Some("upload")
            && ["secret", "access_key", "password", "token", "key_id"]
                .iter()
                .any(|s| unknown.to_ascii_lowercase().contains(s));
        let hint = renamed
            .map(|(_, hint)| hint.to_string())
            .or_else(|| secret.then(|| SECRET_HINT.to_string()))
            .or_else(|| closest(unknown, &expected).map(|best| format!("did you mean \"{best}\"?")))
            .or_else(|| {
                (!expected.is_empty()).then(|| format!("valid keys here: {}", expected.join(", ")))
            });
        return (format!("unknown key \"{unknown}\" {within}"), hint);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (unknown, expected) = split_expected(rest);
        let quoted: Vec<String> = expected.iter().map(|e| format!("\"{e}\"")).collect();
        let hint = closest(unknown, &expected)
            .map(|best| format!("did you mean \"{best}\"?"))
            .or_else(|| Some(format!("write one of {}", quoted.join(", "))));
        return (
            format!("unknown value \"{unknown}\" for {}", display_key(path)),
            hint,
        );
    }
    // "invalid type: string \"x\", expected f64" and "invalid value: ..., expected ...".
    let mismatch = message
        .strip_prefix("invalid type: ")
        .map(|rest| (rest, true))
        .or_else(|| {
            message
                .strip_prefix("invalid value: ")
                .map(|rest| (rest, false))
        });
    if let Some((rest, is_type)) = mismatch
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        let example =
            default_example(path, key_name).map(|example| format!("write e.g. {example}"));
        let whole = expected.starts_with('i') || expected.starts_with('u');
        // An integer where an integer goes: too large or negative for it.
        if whole
            && let Some(number) = found
                .strip_prefix("integer `")
                .and_then(|n| n.split_once('`'))
                .map(|(n, _)| n)
        {
            let message = if number.starts_with('-') && expected.starts_with('u') {
                format!(
                    "{} = {number} is out of range: it must be 0 or more",
                    display_key(path)
                )
            } else {
                format!(
                    "{} = {number} is out of range: too large",
                    display_key(path)
                )
            };
            return (message, example);
        }
        let list = describe_expected(expected, path) == "a list";
        let hint = match found.strip_prefix("string ") {
            // One value where a list goes: the same value in brackets.
            Some(quoted) if list => Some(format!("write {key_name} = [{quoted}]")),
            _ if is_type => example,
            _ => None,
        };
        return (
            format!(
                "{} must be {}, found {found}",
                display_key(path),
                describe_expected(expected, path)
            ),
            hint,
        );
    }
    (format!("{}: {message}", display_key(path)), None)
}

fn display_key(path: &str) -> String {
    if path.is_empty() {
        "the file".into()
    } else {
        path.to_string()
    }
}

/// Split "x`, expected one of `a`, `b`" into ("x", ["a", "b"]).
pub(crate) fn split_expected(rest: &str) -> (&str, Vec<&str>) {
    let (unknown, tail) = rest.split_once('`').unwrap_or((rest, ""));
    let expected = tail.split('`').skip(1).step_by(2).collect();
    (unknown, expected)
}

fn closest<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // A shortened key (`dev` for `device`) before one a letter or two away.
    if unknown.len() >= 3
        && let Some(longer) = candidates.iter().find(|c| c.starts_with(unknown))
    {
        return Some(longer);
    }
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(unknown, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn describe_expected(expected: &str, path: &str) -> String {
    let e = expected.trim();
    // The top-level lists of tables, by the first key of the path.
    let list_of = ["camera", "trigger"].into_iter().find(|name| {
        path.strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
    });
    if e.starts_with('i') || e.starts_with('u') {
        "a whole number".into()
    } else if e.starts_with('f') {
        "a number".into()
    } else if e.contains("string") || e.contains("variant") {
        "a string in quotes".into()
    } else if e.contains("bool") {
        "true or false".into()
    } else if e.contains("sequence") {
        list_of.map_or("a list".into(), |name| {
            format!("a list of [[{name}]] tables")
        })
    } else if e.starts_with("struct") {
        list_of.map_or("a table".into(), |name| format!("a [[{name}]] table"))
    } else {
        e.to_string()
    }
}

/// `key = value` as written in the default config, to show in hints.
fn default_example(path: &str, key_name: &str) -> Option<String> {
    let generic = path_without_indexes(path);
    let (table, _) = generic.rsplit_once('.')?;
    let mut in_table = false;
    for line in DEFAULT_CONFIG_TOML.lines() {
        let line = line.trim_start_matches("# ").trim();
        if line.starts_with('[') {
            in_table = line.trim_matches(['[', ']']) == table;
            continue;
        }
        if in_table
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key_name
        {
            return Some(format!("{key_name} = {}", without_comment(v).trim()));
        }
    }
    None
}

/// A TOML value without the comment after it (a `#` outside quotes).
fn without_comment(value: &str) -> &str {
    let mut quoted = false;
    for (i, ch) in value.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '#' if !quoted => return &value[..i],
            _ => {}
        }
    }
    value
}

fn path_without_indexes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0;
    for ch in path.chars() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out
}
