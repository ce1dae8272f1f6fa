//! What a logical backup holds, from its table of contents and its manifest: schemas, tables
//! (partitions under their parent) with the exact row counts recorded at dump time,
//! sequences, views, functions, types and extensions. Needs no database.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::manifest::Manifest;
use crate::toc::{Toc, TocEntry};

/// A table and, for a partitioned table, its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableInfo {
    /// Table name, exactly as in the database.
    pub name: String,
    /// Rows in the dump's snapshot, from the manifest (None: the manifest has no count).
    pub rows: Option<i64>,
    /// On-disk size in bytes at dump time, from the manifest (None: not recorded; a
    /// partitioned table's is the sum of its partitions').
    pub size_bytes: Option<i64>,
    /// Partitions attached to this table (themselves possibly partitioned).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<TableInfo>,
}

/// One schema's objects, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SchemaInfo {
    /// Schema name.
    pub name: String,
    /// Tables that are not partitions (partitions are listed under their parent).
    pub tables: Vec<TableInfo>,
    /// Sequences.
    pub sequences: Vec<String>,
    /// Views.
    pub views: Vec<String>,
    /// Materialized views.
    pub materialized_views: Vec<String>,
    /// Functions, procedures and aggregates, with their argument types.
    pub functions: Vec<String>,
    /// Types and domains.
    pub types: Vec<String>,
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contents {
    /// The dumped database.
    pub database: String,
    /// Server version that was dumped.
    pub server_version: String,
    /// pg_dump version that wrote the archive.
    pub pg_dump_version: String,
    /// Schemas, sorted by name.
    pub schemas: Vec<SchemaInfo>,
    /// Extensions.
    pub extensions: Vec<String>,
    /// Totals over all schemas.
    pub totals: Totals,
}

/// Totals over all schemas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Tables, partitions included.
    pub tables: usize,
    /// Rows of every table the manifest counted (partitioned parents are not counted twice).
    pub rows: i64,
    /// Sequences.
    pub sequences: usize,
    /// Views and materialized views.
    pub views: usize,
    /// Functions, procedures and aggregates.
    pub functions: usize,
}

impl Contents {
    /// Build from an archive's TOC, with row counts from its manifest when there is one.
    pub fn new(toc: &Toc, manifest: Option<&Manifest>) -> Self {
        let rows: HashMap<(&str, &str), (i64, Option<i64>)> = manifest
            .map(|m| {
                m.tables
                    .iter()
                    .map(|t| ((t.schema.as_str(), t.name.as_str()), (t.rows, t.size_bytes)))
                    .collect()
            })
            .unwrap_or_default();
        let by_id: HashMap<i64, &TocEntry> = toc.entries.iter().map(|e| (e.dump_id, e)).collect();
        let parent_of = toc.partition_parents();
        let mut schemas: BTreeMap<String, SchemaInfo> = BTreeMap::new();
        let mut extensions = Vec::new();
        let mut totals = Totals::default();
        let schema_of = |e: &TocEntry| e.namespace.clone().unwrap_or_default();
        for e in &toc.entries {
            if e.desc == "SCHEMA" {
                schemas.entry(e.tag.clone()).or_insert_with(|| SchemaInfo {
                    name: e.tag.clone(),
                    ..SchemaInfo::default()
                });
                continue;
            }
            if e.desc == "EXTENSION" {
                extensions.push(e.tag.clone());
                continue;
            }
            let pick: fn(&mut SchemaInfo) -> &mut Vec<String> = match e.desc.as_str() {
                "SEQUENCE" => |s| &mut s.sequences,
                "VIEW" => |s| &mut s.views,
                "MATERIALIZED VIEW" => |s| &mut s.materialized_views,
                "FUNCTION" | "PROCEDURE" | "AGGREGATE" => |s| &mut s.functions,
                "TYPE" | "DOMAIN" => |s| &mut s.types,
                _ => continue,
            };
            let schema = schemas.entry(schema_of(e)).or_insert_with(|| SchemaInfo {
                name: schema_of(e),
                ..SchemaInfo::default()
            });
            pick(schema).push(e.tag.clone());
        }
        // Tables: build each tree from its roots (tables that are nobody's partition).
        let mut children: HashMap<i64, Vec<i64>> = HashMap::new();
        for (c, p) in &parent_of {
            children.entry(*p).or_default().push(*c);
        }
        fn build(
            id: i64,
            by_id: &HashMap<i64, &TocEntry>,
            children: &HashMap<i64, Vec<i64>>,
            rows: &HashMap<(&str, &str), (i64, Option<i64>)>,
            depth: usize,
        ) -> Option<TableInfo> {
            let e = by_id.get(&id)?;
            let ns = e.namespace.as_deref().unwrap_or_default();
            let mut partitions: Vec<TableInfo> = if depth < 64 {
                children
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| build(*c, by_id, children, rows, depth + 1))
                    .collect()
            } else {
                Vec::new()
            };
            partitions.sort_by(|a, b| a.name.cmp(&b.name));
            let recorded = rows.get(&(ns, e.tag.as_str()));
            Some(TableInfo {
                name: e.tag.clone(),
                rows: recorded.map(|r| r.0),
                size_bytes: recorded.and_then(|r| r.1),
                partitions,
            })
        }
        for e in toc.entries.iter().filter(|e| e.desc == "TABLE") {
            totals.tables += 1;
            let is_partition = parent_of.contains_key(&e.dump_id);
            let has_partitions = children.contains_key(&e.dump_id);
            if !has_partitions {
                // Leaf tables hold the rows: a partitioned parent's count includes them.
                let ns = e.namespace.as_deref().unwrap_or_default();
                totals.rows += rows.get(&(ns, e.tag.as_str())).map_or(0, |r| r.0);
            }
            if is_partition {
                continue;
            }
            if let Some(t) = build(e.dump_id, &by_id, &children, &rows, 0) {
                let name = schema_of(e);
                schemas
                    .entry(name.clone())
                    .or_insert_with(|| SchemaInfo {
                        name,
                        ..SchemaInfo::default()
                    })
                    .tables
                    .push(t);
            }
        }
        for s in schemas.values_mut() {
            s.tables.sort_by(|a, b| a.name.cmp(&b.name));
            for l in [
                &mut s.sequences,
                &mut s.views,
                &mut s.materialized_views,
                &mut s.functions,
                &mut s.types,
            ] {
                l.sort();
            }
            totals.sequences += s.sequences.len();
            totals.views += s.views.len() + s.materialized_views.len();
            totals.functions += s.functions.len();
        }
        extensions.sort();
        Contents {
            database: manifest
                .map(|m| m.database.clone())
                .unwrap_or_else(|| toc.database.clone()),
            server_version: toc.server_version.clone(),
            pg_dump_version: toc.dump_version.clone(),
            schemas: schemas.into_values().collect(),
            extensions,
            totals,
        }
    }
}
