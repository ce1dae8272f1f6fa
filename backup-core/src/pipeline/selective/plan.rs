//! Which entries of an archive's table of contents a selective restore gives pg_restore.
//!
//! ```text
//! names ─▶ TABLE entries (exact match) ─▶ + partitions (TABLE ATTACH) ─▶ + referenced tables (--with-dependencies)
//!   ─▶ every entry whose tables are all selected (data, indexes, constraints, triggers, policies, identity, …)
//!   ─▶ + what those need (schemas, types, functions, extensions, sequences)
//!   ─▶ + comments, privileges and sequence values of what is in
//! ```
//! An entry "belongs" to the tables reached by following its dependencies through
//! everything but schema-level objects (functions, types, …). Foreign keys that involve a
//! table that is not restored are left out and reported.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::error::{Error, Result};
use crate::pg::display_ident;
use crate::toc::{Toc, TocEntry};

/// What to restore, as the user wrote it.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `SCHEMA.TABLE` specs (see [`parse_table_spec`] for quoting and dots).
    pub tables: Vec<String>,
    /// Schemas whose tables are all restored.
    pub schemas: Vec<String>,
    /// Also restore the tables the selected ones reference by foreign key (transitively),
    /// so those keys are kept.
    pub with_dependencies: bool,
}

/// A foreign key that was not restored because one of its tables was not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOutKey {
    /// Constraint name.
    pub name: String,
    /// The table it is defined on `(schema, name)`.
    pub table: (String, String),
    /// The table it references.
    pub references: Vec<(String, String)>,
}

impl std::fmt::Display for LeftOutKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let refs: Vec<String> = self.references.iter().map(qualified).collect();
        write!(
            f,
            "foreign key {} on {} (references {})",
            display_ident(&self.name),
            qualified(&self.table),
            refs.join(", ")
        )
    }
}

/// `schema.name`, each part quoted only where it needs it.
pub fn qualified((schema, name): &(String, String)) -> String {
    format!("{}.{}", display_ident(schema), display_ident(name))
}

/// The entries to restore and what they amount to.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Dump ids to give `pg_restore --use-list`, in archive order.
    pub entries: Vec<i64>,
    /// Every restored table `(schema, name)`: the selected ones, their partitions and,
    /// with `with_dependencies`, the tables they reference.
    pub tables: BTreeSet<(String, String)>,
    /// Foreign keys left out.
    pub left_out: Vec<LeftOutKey>,
}

impl Plan {
    /// The list file pg_restore reads (`--use-list`): one dump id per line.
    pub fn list_file(&self) -> String {
        let mut out = String::from("; kaizen-backup selective restore\n");
        for id in &self.entries {
            out.push_str(&format!("{id};\n"));
        }
        out
    }
}

/// Schema-level objects: an entry that depends on one does not belong to a table through
/// it, and one is restored only when a restored entry needs it.
const SHARED: &[&str] = &[
    "SCHEMA",
    "EXTENSION",
    "TYPE",
    "SHELL TYPE",
    "DOMAIN",
    "FUNCTION",
    "PROCEDURE",
    "AGGREGATE",
    "COLLATION",
    "CONVERSION",
    "OPERATOR",
    "OPERATOR CLASS",
    "OPERATOR FAMILY",
    "CAST",
    "TRANSFORM",
    "TEXT SEARCH PARSER",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH TEMPLATE",
    "TEXT SEARCH CONFIGURATION",
    "FOREIGN DATA WRAPPER",
    "SERVER",
    "PROCEDURAL LANGUAGE",
    "ACCESS METHOD",
    "ENCODING",
    "STDSTRINGS",
    "SEARCHPATH",
];

/// Never restored in this mode, nor anything that depends on them.
const NEVER: &[&str] = &[
    "VIEW",
    "MATERIALIZED VIEW",
    "MATERIALIZED VIEW DATA",
    "FOREIGN TABLE",
    "BLOB",
    "BLOBS",
    "BLOB METADATA",
    "LARGE OBJECT",
    "PUBLICATION",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "SUBSCRIPTION",
    "SUBSCRIPTION TABLE",
    "EVENT TRIGGER",
    "DATABASE",
    "DATABASE PROPERTIES",
    "USER MAPPING",
    "DEFAULT ACL",
];

/// Entries about another entry: restored when everything they depend on is.
const ABOUT: &[&str] = &[
    "COMMENT",
    "ACL",
    "SECURITY LABEL",
    "SEQUENCE SET",
    "SEQUENCE OWNED BY",
];

/// Stands for "depends on something that is never restored" in a set of table ids.
const UNRESTORABLE: i64 = -1;

/// How many closest names an unknown one lists.
const CLOSEST: usize = 5;

/// Resolve `selection` against `toc` and pick the entries to restore.
pub fn build(toc: &Toc, selection: &Selection) -> Result<Plan> {
    let tables: HashMap<(&str, &str), i64> = toc
        .entries
        .iter()
        .filter(|e| e.desc == "TABLE")
        .map(|e| {
            (
                (e.namespace.as_deref().unwrap_or_default(), e.tag.as_str()),
                e.dump_id,
            )
        })
        .collect();
    if selection.tables.is_empty() && selection.schemas.is_empty() {
        return Err(Error::usage("name at least one --table or --schema"));
    }
    let mut selected: BTreeSet<i64> = BTreeSet::new();
    for spec in &selection.tables {
        selected.insert(find_table(&tables, spec)?);
    }
    for spec in &selection.schemas {
        selected.extend(find_schema(toc, &tables, spec)?);
    }

    let by_id: HashMap<i64, &TocEntry> = toc.entries.iter().map(|e| (e.dump_id, e)).collect();
    let mut belongs = Belongs {
        by_id: &by_id,
        memo: HashMap::new(),
    };
    let parent_of = toc.partition_parents();
    let mut children: HashMap<i64, Vec<i64>> = HashMap::new();
    for (child, parent) in &parent_of {
        children.entry(*parent).or_default().push(*child);
    }
    let keys: Vec<&TocEntry> = toc
        .entries
        .iter()
        .filter(|e| e.desc == "FK CONSTRAINT")
        .collect();
    // Partitions with their parent; with --with-dependencies, referenced tables too.
    loop {
        let before = selected.len();
        let mut stack: Vec<i64> = selected.iter().copied().collect();
        while let Some(t) = stack.pop() {
            for c in children.get(&t).into_iter().flatten() {
                if selected.insert(*c) {
                    stack.push(*c);
                }
            }
        }
        // A table that INHERITS from another cannot be created without it (a partition
        // can: it is attached by a separate entry).
        let inherits: Vec<i64> = selected
            .iter()
            .filter(|t| !parent_of.contains_key(t))
            .filter_map(|t| by_id.get(t))
            .flat_map(|e| e.dependencies.iter())
            .filter(|d| by_id.get(d).is_some_and(|p| p.desc == "TABLE"))
            .copied()
            .collect();
        selected.extend(inherits);
        if selection.with_dependencies {
            for k in &keys {
                let own = own_tables(k, &by_id);
                if own.iter().any(|t| selected.contains(t)) {
                    let all = belongs.tables(k.dump_id);
                    selected.extend(all.iter().filter(|t| **t != UNRESTORABLE));
                }
            }
        }
        if selected.len() == before {
            break;
        }
    }

    // Entries that belong to selected tables only.
    let mut included: HashSet<i64> = HashSet::new();
    let mut left_out = Vec::new();
    for e in &toc.entries {
        if NEVER.contains(&e.desc.as_str()) {
            continue;
        }
        let owners = belongs.tables(e.dump_id);
        if owners.is_empty() {
            continue;
        }
        if owners.iter().all(|t| selected.contains(t)) {
            included.insert(e.dump_id);
        } else if e.desc == "FK CONSTRAINT" && owners.iter().any(|t| selected.contains(t)) {
            let own = own_tables(e, &by_id);
            let name_of = |id: &i64| {
                by_id
                    .get(id)
                    .map(|t| (t.namespace.clone().unwrap_or_default(), t.tag.clone()))
            };
            let table_name = own
                .first()
                .and_then(|id| by_id.get(id))
                .map(|t| t.tag.len());
            left_out.push(LeftOutKey {
                name: table_name
                    .and_then(|n| e.tag.get(n + 1..))
                    .unwrap_or(&e.tag)
                    .to_string(),
                table: own
                    .first()
                    .and_then(name_of)
                    .unwrap_or_else(|| (e.namespace.clone().unwrap_or_default(), String::new())),
                references: owners
                    .iter()
                    .filter(|t| !own.contains(t))
                    .filter_map(name_of)
                    .collect(),
            });
        }
    }
    // What they need: schemas, types, functions, extensions, sequences, transitively.
    let mut stack: Vec<i64> = included.iter().copied().collect();
    while let Some(id) = stack.pop() {
        let Some(e) = by_id.get(&id) else { continue };
        for d in &e.dependencies {
            let Some(dep) = by_id.get(d) else { continue };
            if included.contains(d) || dep.desc == "TABLE" || NEVER.contains(&dep.desc.as_str()) {
                continue;
            }
            if belongs.tables(*d).iter().all(|t| selected.contains(t)) {
                included.insert(*d);
                stack.push(*d);
            }
        }
    }
    // Comments, privileges, sequence values of what is restored.
    loop {
        let mut added = false;
        for e in &toc.entries {
            if !included.contains(&e.dump_id)
                && ABOUT.contains(&e.desc.as_str())
                && !e.dependencies.is_empty()
                && e.dependencies.iter().all(|d| included.contains(d))
            {
                included.insert(e.dump_id);
                added = true;
            }
        }
        if !added {
            break;
        }
    }
    let entries = toc
        .entries
        .iter()
        .map(|e| e.dump_id)
        .filter(|id| included.contains(id))
        .collect();
    let tables = selected
        .iter()
        .filter_map(|id| by_id.get(id))
        .map(|e| (e.namespace.clone().unwrap_or_default(), e.tag.clone()))
        .collect();
    Ok(Plan {
        entries,
        tables,
        left_out,
    })
}

/// The table a constraint is defined on: pg_dump tags it `TABLE CONSTRAINT` and makes it
/// depend on that table (a foreign key depends on the referenced table as well).
fn own_tables(e: &TocEntry, by_id: &HashMap<i64, &TocEntry>) -> Vec<i64> {
    let mut own: Vec<&TocEntry> = e
        .dependencies
        .iter()
        .filter_map(|d| by_id.get(d).copied())
        .filter(|t| {
            t.desc == "TABLE"
                && t.namespace == e.namespace
                && e.tag
                    .strip_prefix(t.tag.as_str())
                    .is_some_and(|rest| rest.starts_with(' '))
        })
        .collect();
    // Table `a` and table `a b` both prefix `a b c`: the longest name wins.
    own.sort_by_key(|t| std::cmp::Reverse(t.tag.len()));
    own.first().map(|t| vec![t.dump_id]).unwrap_or_default()
}

/// Which tables each entry belongs to (memoized walk of the dependencies).
struct Belongs<'a> {
    by_id: &'a HashMap<i64, &'a TocEntry>,
    memo: HashMap<i64, BTreeSet<i64>>,
}

impl Belongs<'_> {
    fn tables(&mut self, id: i64) -> BTreeSet<i64> {
        self.walk(id, 0)
    }

    fn walk(&mut self, id: i64, depth: usize) -> BTreeSet<i64> {
        if let Some(t) = self.memo.get(&id) {
            return t.clone();
        }
        let Some(e) = self.by_id.get(&id).copied() else {
            return BTreeSet::new();
        };
        let mut out = BTreeSet::new();
        if e.desc == "TABLE" {
            out.insert(id);
        } else if NEVER.contains(&e.desc.as_str()) {
            out.insert(UNRESTORABLE);
        } else if SHARED.contains(&e.desc.as_str()) {
            // belongs to no table
        } else if depth > 256 {
            // A dependency chain this long is a damaged archive: restore nothing of it.
            out.insert(UNRESTORABLE);
        } else {
            for d in &e.dependencies {
                out.extend(self.walk(*d, depth + 1));
            }
        }
        self.memo.insert(id, out.clone());
        out
    }
}

/// Split a `--table` spec into its parts.
///
/// With a double quote anywhere, the spec is read as SQL identifiers: `"a.b"."c"`,
/// `"My Schema".orders`, `"say ""hi"""` (a doubled quote is a quote); unquoted parts are
/// taken as written (not lower-cased). Without quotes, `None`: the caller tries every
/// split at a dot.
pub fn parse_table_spec(spec: &str) -> Result<Option<Vec<String>>> {
    if !spec.contains('"') {
        return Ok(None);
    }
    let bad = |why: &str| Error::usage(format!("--table {spec:?}: {why}"));
    let mut parts = Vec::new();
    let mut chars = spec.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(bad("a quoted name is not closed")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err(bad("a quote inside an unquoted name"));
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(bad("an empty name"));
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => {}
            Some(_) => return Err(bad("expected a dot after a quoted name")),
        }
    }
    if parts.len() > 2 {
        return Err(bad(
            "more than SCHEMA.TABLE; quote a name that contains a dot",
        ));
    }
    Ok(Some(parts))
}

fn find_table(tables: &HashMap<(&str, &str), i64>, spec: &str) -> Result<i64> {
    // Matches by (schema, name): exact, case and all.
    let mut found: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut look = |s: Option<&str>, t: &str| {
        for ((ks, kt), id) in tables {
            if *kt == t && s.is_none_or(|s| s == *ks) {
                found.insert((ks.to_string(), kt.to_string()), *id);
            }
        }
    };
    match parse_table_spec(spec)? {
        Some(parts) => match parts.as_slice() {
            [s, t] => look(Some(s), t),
            [t] => look(None, t),
            _ => {}
        },
        None => {
            // Unquoted: every split at a dot, and the whole spec as a table name.
            for (i, _) in spec.match_indices('.') {
                look(Some(&spec[..i]), &spec[i + 1..]);
            }
            look(None, spec);
        }
    }
    let names: Vec<String> = found.keys().map(qualified).collect();
    match found.len() {
        1 => found
            .values()
            .next()
            .copied()
            .ok_or_else(|| Error::other("table lookup")),
        0 => {
            let all: Vec<String> = tables
                .keys()
                .map(|(s, t)| qualified(&(s.to_string(), t.to_string())))
                .collect();
            Err(Error::NotFound(format!(
                "table {spec} is not in the backup{}",
                closest_hint(spec, &all)
            )))
        }
        _ => Err(Error::usage(format!(
            "--table {spec} matches {}; name one with quotes, e.g. --table '{}'",
            names.join(" and "),
            names.first().cloned().unwrap_or_default()
        ))),
    }
}

fn find_schema(toc: &Toc, tables: &HashMap<(&str, &str), i64>, spec: &str) -> Result<Vec<i64>> {
    let name = match spec.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) if !inner.is_empty() => inner.replace("\"\"", "\""),
        _ => spec.to_string(),
    };
    let ids: Vec<i64> = tables
        .iter()
        .filter(|((s, _), _)| *s == name)
        .map(|(_, id)| *id)
        .collect();
    if !ids.is_empty() {
        return Ok(ids);
    }
    let mut schemas: BTreeSet<String> = toc
        .entries
        .iter()
        .filter(|e| e.desc == "SCHEMA")
        .map(|e| e.tag.clone())
        .collect();
    schemas.extend(tables.keys().map(|(s, _)| s.to_string()));
    if schemas.contains(&name) {
        return Err(Error::NotFound(format!(
            "schema {} holds no tables in the backup",
            display_ident(&name)
        )));
    }
    let names: Vec<String> = schemas.iter().map(|s| display_ident(s)).collect();
    Err(Error::NotFound(format!(
        "schema {spec} is not in the backup{}",
        closest_hint(spec, &names)
    )))
}

/// `"; closest: a, b, c"` — the names nearest to `wanted` by edit distance (case ignored
/// first, then exact), or `"; it holds none"`.
fn closest_hint(wanted: &str, names: &[String]) -> String {
    if names.is_empty() {
        return "; it holds none".into();
    }
    let w = wanted.to_lowercase();
    let mut scored: Vec<(usize, usize, &String)> = names
        .iter()
        .map(|n| (distance(&w, &n.to_lowercase()), distance(wanted, n), n))
        .collect();
    scored.sort();
    let best: Vec<&str> = scored
        .iter()
        .take(CLOSEST)
        .map(|(_, _, n)| n.as_str())
        .collect();
    format!("; closest: {}", best.join(", "))
}

/// Levenshtein distance over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
