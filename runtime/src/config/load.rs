//! Reading config files into one document: parse each file, merge the later ones over
//! the earlier ones key by key (`[[camera]]` tables by `name`), and deserialize the
//! merged document — keeping, for every key, where in which file it was written.
//!
//! All files' texts are held in one buffer and every span in the merged tree is an
//! offset into it, so an error anywhere in the merged document maps back to its file,
//! line and column, whichever file set the value.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::{
    Spanned,
    de::{DeArray, DeTable, DeValue},
};

use super::{
    check::{PathPart, dotted},
    diagnostics::{ConfigError, Diagnostic, explain, line_column},
};

/// The texts of the files of one load, back to back.
pub(crate) struct Sources {
    text: String,
    files: Vec<(String, Range<usize>)>,
}

impl Sources {
    /// `(name, text)` of each file, earliest (the base) first.
    pub(crate) fn new<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut sources = Sources {
            text: String::new(),
            files: Vec::new(),
        };
        for (name, text) in files {
            let start = sources.text.len();
            sources.text.push_str(text);
            sources
                .files
                .push((name.to_string(), start..sources.text.len()));
            // Keeps every file's spans apart, even of an empty file.
            sources.text.push('\n');
        }
        sources
    }

    /// A diagnostic at `offset` in the buffer (None: no position known).
    pub(crate) fn diagnostic(
        &self,
        offset: Option<usize>,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        let file = offset
            .and_then(|at| {
                self.files
                    .iter()
                    .find(|(_, r)| r.start <= at && at <= r.end)
            })
            .or(self.files.last());
        let (name, line, column) = match (file, offset) {
            (Some((name, range)), Some(at)) => {
                let (line, column) = line_column(&self.text[range.clone()], at - range.start);
                (name.clone(), line, column)
            }
            (Some((name, _)), None) => (name.clone(), 0, 0),
            (None, _) => (String::new(), 0, 0),
        };
        Diagnostic {
            file: name,
            line,
            column,
            message,
            hint,
        }
    }

    /// The error of `diagnostics`, in the order the files were given, then by line
    /// and column.
    pub(crate) fn error(&self, mut diagnostics: Vec<Diagnostic>) -> ConfigError {
        let order = |d: &Diagnostic| self.files.iter().position(|(name, _)| *name == d.file);
        diagnostics.sort_by_key(|d| (order(d), d.line, d.column));
        ConfigError { diagnostics }
    }

    /// Parse every file and merge them. Syntax errors are reported for every file.
    pub(crate) fn merged(&self) -> Result<Spanned<DeTable<'_>>, Vec<Diagnostic>> {
        let mut merged: Option<Spanned<DeTable<'_>>> = None;
        let mut errors = Vec::new();
        for (_, range) in &self.files {
            let (doc, syntax) = DeTable::parse_recoverable(&self.text[range.clone()]);
            let text = &self.text[range.clone()];
            for e in &syntax {
                let at = Some(e.span().map_or(range.start, |s| s.start + range.start));
                let message = e.message().trim();
                let key = e
                    .span()
                    .filter(|_| message.starts_with("duplicate key"))
                    .and_then(|s| {
                        let key = text.get(s.clone())?.trim().trim_matches(['"', '\'']);
                        let line_start = text[..s.start].rfind('\n').map_or(0, |i| i + 1);
                        let line = &text[line_start..];
                        let line = &line[..line.find('\n').unwrap_or(line.len())];
                        // A table header names the whole dotted table.
                        let header = line
                            .trim_start()
                            .strip_prefix('[')
                            .and_then(|h| Some(h.get(..h.find(']')?)?.trim()));
                        let (key, header) = match header {
                            Some(table) => (table, true),
                            None => (key, false),
                        };
                        (!key.is_empty() && !key.contains('\n')).then_some((key, header))
                    });
                errors.push(match key {
                    Some((table, true)) => self.diagnostic(
                        at,
                        format!("invalid TOML: [{table}] is written twice"),
                        Some(format!("merge the two [{table}] tables into one")),
                    ),
                    Some((key, false)) => self.diagnostic(
                        at,
                        format!("invalid TOML: {key} is set twice in one table"),
                        Some(format!("keep one {key} = ... and delete the other")),
                    ),
                    _ => self.diagnostic(
                        at,
                        format!("invalid TOML: {message}"),
                        Some("see https://toml.io for the syntax; `framesift config default` prints a valid file".into()),
                    ),
                });
            }
            let doc = shift_table(doc, range.start);
            merged = Some(match merged {
                None => doc,
                Some(mut base) => {
                    merge_tables(base.get_mut(), doc.into_inner(), true);
                    base
                }
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(merged.unwrap_or_else(|| Spanned::new(0..0, DeTable::new())))
    }

    /// Deserialize `T` from the merged document, collecting every serde error rather
    /// than stopping at the first: after each, the offending entry is removed and
    /// deserialization retried. `None` when an error could not be isolated.
    pub(crate) fn deserialize<T: DeserializeOwned>(
        &self,
        doc: &Spanned<DeTable<'_>>,
        diagnostics: &mut Vec<Diagnostic>,
        reported: &mut Vec<Vec<PathPart>>,
    ) -> Option<T> {
        let mut working = doc.clone();
        let mut last: Option<(Range<usize>, String)> = None;
        for _ in 0..100 {
            match T::deserialize(toml::de::Deserializer::from(working.clone())) {
                Ok(value) => return Some(value),
                Err(e) => {
                    let Some(span) = e.span() else {
                        diagnostics.push(self.diagnostic(None, e.message().trim().into(), None));
                        return None;
                    };
                    let entry = find_entry(working.get_ref(), &span, &mut Vec::new());
                    let repeated = last.as_ref() == Some(&(span.clone(), e.message().to_string()));
                    if repeated {
                        // Removing the entry did not clear the error (a blanked table
                        // item that is wrong as a table): the whole list goes, told once.
                        match entry.as_deref().and_then(outermost_list) {
                            Some(list) if remove(working.get_mut(), list, false) => continue,
                            _ => return None,
                        }
                    }
                    // Named as written: a list rebuilt without a bad value has moved
                    // the values after it.
                    let written =
                        find_entry(doc.get_ref(), &span, &mut Vec::new()).or(entry.clone());
                    let path = written.as_deref().map(dotted).unwrap_or_default();
                    let (message, hint) = explain(e.message(), &path);
                    diagnostics.push(self.diagnostic(Some(span.start), message, hint));
                    let wants_table = e.message().contains("expected struct");
                    reported.extend(written);
                    last = Some((span, e.message().to_string()));
                    match entry {
                        Some(path) if remove(working.get_mut(), &path, wants_table) => {}
                        _ => return None,
                    }
                }
            }
        }
        None
    }

    /// Tables written as something else (`[[keep]]`, `keep = 5`, `[trigger]`): one
    /// message each saying what to write, and the entry removed, so that serde's
    /// account of it (a list read as the table's fields) does not follow. `defaults` is
    /// the default config as a TOML table: a key holding a table there holds one here;
    /// `lists` are the top-level lists of tables.
    pub(crate) fn check_shapes(
        &self,
        doc: &mut DeTable<'_>,
        defaults: &toml::Table,
        lists: &[&str],
        prefix: &str,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let mut wrong = Vec::new();
        for (key, value) in doc.iter_mut() {
            let name = key.get_ref().to_string();
            let full = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let at = Some(key.span().start);
            if prefix.is_empty() && lists.contains(&name.as_str()) {
                if !value.get_ref().is_array() {
                    diagnostics.push(self.diagnostic(
                        at,
                        format!(
                            "{full} is a list of tables, found {}",
                            kind(value.get_ref())
                        ),
                        Some(format!(
                            "write [[{full}]] (two brackets) above each one's keys"
                        )),
                    ));
                    wrong.push(name);
                }
                continue;
            }
            let Some(toml::Value::Table(inner)) = defaults.get(&name) else {
                continue;
            };
            match value.get_mut() {
                DeValue::Table(t) => self.check_shapes(t, inner, &[], &full, diagnostics),
                DeValue::Array(_) => {
                    diagnostics.push(self.diagnostic(
                        at,
                        format!("[{full}] is one table, not a list"),
                        Some(format!("write [{full}], not [[{full}]]")),
                    ));
                    wrong.push(name);
                }
                other => {
                    diagnostics.push(self.diagnostic(
                        at,
                        format!("{full} is a table, found {}", kind(other)),
                        Some(format!(
                            "write [{full}] on a line of its own with its keys below it; `framesift config default` shows them"
                        )),
                    ));
                    wrong.push(name);
                }
            }
        }
        for name in wrong {
            doc.remove(name.as_str());
        }
    }

    /// Where the key at `path` was written (its key), else the closest enclosing table.
    pub(crate) fn locate(&self, doc: &DeTable<'_>, path: &[PathPart]) -> Option<usize> {
        locate(doc, path).map(|r| r.start)
    }
}

/// What a value is, for messages.
fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a whole number",
        DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "true or false",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// Move every span of a parsed file by `by`, to its place in the shared buffer.
fn shift_table<'a>(doc: Spanned<DeTable<'a>>, by: usize) -> Spanned<DeTable<'a>> {
    let span = doc.span();
    let table = doc
        .into_inner()
        .into_iter()
        .map(|(k, v)| (shift_span(k, by), shift_value(v, by)))
        .collect();
    Spanned::new(span.start + by..span.end + by, table)
}

fn shift_span<T>(s: Spanned<T>, by: usize) -> Spanned<T> {
    let span = s.span();
    Spanned::new(span.start + by..span.end + by, s.into_inner())
}

fn shift_value<'a>(v: Spanned<DeValue<'a>>, by: usize) -> Spanned<DeValue<'a>> {
    let span = v.span();
    let value = match v.into_inner() {
        DeValue::Table(t) => {
            DeValue::Table(shift_table(Spanned::new(span.clone(), t), by).into_inner())
        }
        DeValue::Array(mut items) => {
            for item in items.iter_mut() {
                *item = shift_value(item.clone(), by);
            }
            DeValue::Array(items)
        }
        other => other,
    };
    Spanned::new(span.start + by..span.end + by, value)
}

/// Merge `over` into `base`: tables merge key by key, `[[camera]]` items merge by
/// name, anything else is replaced.
fn merge_tables<'a>(base: &mut DeTable<'a>, over: DeTable<'a>, top: bool) {
    for (key, value) in over {
        let name: &str = key.get_ref();
        let both_tables =
            value.get_ref().is_table() && base.get(name).is_some_and(|b| b.get_ref().is_table());
        let both_cameras = top
            && name == "camera"
            && value.get_ref().as_array().is_some()
            && base
                .get(name)
                .is_some_and(|b| b.get_ref().as_array().is_some());
        if both_tables {
            if let (Some(DeValue::Table(b)), DeValue::Table(o)) =
                (base.get_mut(name).map(Spanned::get_mut), value.into_inner())
            {
                merge_tables(b, o, false);
            }
        } else if both_cameras {
            let span = value.span();
            if let (Some(DeValue::Array(b)), DeValue::Array(o)) =
                (base.get(name).map(Spanned::get_ref), value.get_ref())
            {
                let merged = Spanned::new(span, DeValue::Array(merge_cameras(b, o)));
                base.remove(name);
                base.insert(key, merged);
            }
        } else {
            // Remove first: `insert` would keep the old key, and with it the old span.
            base.remove(name);
            base.insert(key, value);
        }
    }
}

/// A camera's name as the config will call it: its `name`, else `cam<index>`.
fn camera_name(item: &DeValue<'_>, index: usize) -> String {
    item.as_table()
        .and_then(|t| t.get("name"))
        .and_then(|n| n.get_ref().as_str())
        .map_or_else(|| format!("cam{index}"), str::to_string)
}

fn merge_cameras<'a>(base: &DeArray<'a>, over: &DeArray<'a>) -> DeArray<'a> {
    let mut out: Vec<Spanned<DeValue<'a>>> = base.iter().cloned().collect();
    for (j, item) in over.iter().enumerate() {
        let name = camera_name(item.get_ref(), j);
        let existing = out
            .iter()
            .enumerate()
            .position(|(i, b)| camera_name(b.get_ref(), i) == name);
        match (existing, item.get_ref()) {
            (Some(i), DeValue::Table(o)) if out[i].get_ref().is_table() => {
                if let DeValue::Table(bt) = out[i].get_mut() {
                    merge_tables(bt, o.clone(), false);
                }
            }
            _ => out.push(item.clone()),
        }
    }
    let mut array = DeArray::new();
    for item in out {
        array.push(item);
    }
    array
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The deepest entry whose key or value span holds `span`. Every node is searched: a
/// merged table holds entries from several files, so its own span says nothing about
/// its children's.
fn find_entry(
    table: &DeTable<'_>,
    span: &Range<usize>,
    prefix: &mut Vec<PathPart>,
) -> Option<Vec<PathPart>> {
    for (k, v) in table.iter() {
        prefix.push(PathPart::Key(k.get_ref().to_string()));
        // An error at the key itself (an unknown key) is about the whole entry, even
        // when an array-of-tables item's span also holds it.
        if contains(&k.span(), span) {
            return Some(prefix.clone());
        }
        let inner = match v.get_ref() {
            DeValue::Table(t) => find_entry(t, span, prefix),
            DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                prefix.push(PathPart::Index(i));
                let found = match item.get_ref() {
                    DeValue::Table(t) => find_entry(t, span, prefix),
                    _ => None,
                }
                .or_else(|| contains(&item.span(), span).then(|| prefix.clone()));
                prefix.pop();
                found
            }),
            _ => None,
        };
        let found = inner.or_else(|| {
            (contains(&k.span(), span) || contains(&v.span(), span)).then(|| prefix.clone())
        });
        prefix.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The path of the first list on `path` (`camera` of `camera[0].fps`).
fn outermost_list(path: &[PathPart]) -> Option<&[PathPart]> {
    let at = path.iter().position(|p| matches!(p, PathPart::Index(_)))?;
    Some(&path[..at])
}

/// Remove the entry at `path`; false when there is none. A list item is blanked to an
/// empty table when it is one or `wants_table`, so the items after it keep their
/// indexes (`camera[2]` in later messages is still the third `[[camera]]`).
fn remove(table: &mut DeTable<'_>, path: &[PathPart], wants_table: bool) -> bool {
    let Some((PathPart::Key(first), rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return table.remove(first.as_str()).is_some();
    }
    let Some(value) = table.get_mut(first.as_str()) else {
        return false;
    };
    match (value.get_mut(), rest) {
        (DeValue::Table(t), _) => remove(t, rest, wants_table),
        (DeValue::Array(items), [PathPart::Index(i), tail @ ..]) => {
            match items.get_mut(*i).map(Spanned::get_mut) {
                Some(DeValue::Table(t)) if !tail.is_empty() => remove(t, tail, wants_table),
                Some(item) if wants_table || item.is_table() => {
                    *item = DeValue::Table(DeTable::new());
                    true
                }
                // A value in a list of values: the list without it. An item cannot
                // leave a DeArray, so the list is rebuilt.
                Some(_) => {
                    let mut rest = DeArray::new();
                    for (j, item) in items.iter().enumerate() {
                        if j != *i {
                            rest.push(item.clone());
                        }
                    }
                    *items = rest;
                    true
                }
                None => false,
            }
        }
        _ => false,
    }
}

/// The span of the key at `path` when present, else the closest enclosing key's.
fn locate(table: &DeTable<'_>, path: &[PathPart]) -> Option<Range<usize>> {
    let (PathPart::Key(name), rest) = path.split_first()? else {
        return None;
    };
    let (k, v) = table.get_key_value(name.as_str())?;
    match rest.first() {
        None => Some(k.span()),
        Some(PathPart::Index(i)) => {
            let DeValue::Array(items) = v.get_ref() else {
                return Some(k.span());
            };
            let Some(item) = items.get(*i) else {
                return Some(k.span());
            };
            match item.get_ref() {
                // A key the table lacks: its first key as written.
                DeValue::Table(inner) => locate(inner, &rest[1..])
                    .or_else(|| inner.keys().map(Spanned::span).min_by_key(|s| s.start))
                    .or(Some(item.span())),
                _ => Some(item.span()),
            }
        }
        Some(PathPart::Key(_)) => {
            let DeValue::Table(inner) = v.get_ref() else {
                return Some(k.span());
            };
            locate(inner, rest).or(Some(k.span()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged_toml(files: &[(&str, &str)]) -> String {
        let sources = Sources::new(files.iter().copied());
        let doc = sources.merged().expect("valid TOML");
        let value: toml::Table = sources
            .deserialize(&doc, &mut Vec::new(), &mut Vec::new())
            .expect("deserializes");
        toml::to_string(&value).expect("serialize")
    }

    #[test]
    fn later_files_override_key_by_key_and_cameras_merge_by_name() {
        let base = "[keep]\ncapacity = 16\nwindow_secs = 30.0\n\n[[camera]]\nname = \"front\"\nseed = 1\n\n[[camera]]\nname = \"back\"\nseed = 2\n";
        let cart = "[keep]\ncapacity = 4\n\n[[camera]]\nname = \"back\"\nseed = 9\n\n[[camera]]\nname = \"side\"\n";
        let merged: toml::Table =
            toml::from_str(&merged_toml(&[("base.toml", base), ("cart.toml", cart)]))
                .expect("toml");
        assert_eq!(merged["keep"]["capacity"].as_integer(), Some(4));
        assert_eq!(merged["keep"]["window_secs"].as_float(), Some(30.0));
        let cameras = merged["camera"].as_array().expect("cameras");
        let names: Vec<&str> = cameras
            .iter()
            .map(|c| c["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["front", "back", "side"]);
        assert_eq!(cameras[0]["seed"].as_integer(), Some(1));
        assert_eq!(cameras[1]["seed"].as_integer(), Some(9));
    }

    #[test]
    fn an_unnamed_overlay_camera_merges_into_the_camera_of_its_default_name() {
        let merged: toml::Table = toml::from_str(&merged_toml(&[
            ("a.toml", "[[camera]]\nseed = 1\nfps = 5.0\n"),
            ("b.toml", "[[camera]]\nseed = 3\n"),
        ]))
        .expect("toml");
        let cameras = merged["camera"].as_array().expect("cameras");
        assert_eq!(cameras.len(), 1);
        assert_eq!(cameras[0]["seed"].as_integer(), Some(3));
        assert_eq!(cameras[0]["fps"].as_float(), Some(5.0));
    }

    #[test]
    fn positions_map_back_to_the_file_that_wrote_the_key() {
        let sources = Sources::new([
            (
                "base.toml",
                "[keep]\ncapacity = 16\n\n[model]\nintra_threads = 2\n",
            ),
            ("cart.toml", "# cart 42\n[model]\nintra_threads = 0\n"),
        ]);
        let doc = sources.merged().expect("valid");
        let at = |path: &[&str]| {
            let path: Vec<PathPart> = path.iter().map(|k| PathPart::from(*k)).collect();
            let d = sources.diagnostic(sources.locate(doc.get_ref(), &path), String::new(), None);
            (d.file, d.line, d.column)
        };
        assert_eq!(at(&["model", "intra_threads"]), ("cart.toml".into(), 3, 1));
        assert_eq!(at(&["keep", "capacity"]), ("base.toml".into(), 2, 1));
        // A key nobody wrote: the enclosing table.
        assert_eq!(at(&["keep", "window_secs"]), ("base.toml".into(), 1, 2));
    }

    #[test]
    fn syntax_errors_are_reported_for_every_file() {
        let sources = Sources::new([("a.toml", "[keep\n"), ("b.toml", "x = = 1\n")]);
        let errors = sources.merged().expect_err("invalid");
        let files: Vec<&str> = errors.iter().map(|d| d.file.as_str()).collect();
        assert!(
            files.contains(&"a.toml") && files.contains(&"b.toml"),
            "{errors:?}"
        );
    }
}
