use super::*;
use crate::toc::ArchiveFormat;

fn entry(id: i64, desc: &str, ns: Option<&str>, tag: &str, deps: &[i64]) -> TocEntry {
    TocEntry {
        dump_id: id,
        had_dumper: desc == "TABLE DATA",
        oid: 0,
        tag: tag.into(),
        desc: desc.into(),
        namespace: ns.map(Into::into),
        owner: None,
        defn: None,
        copy_stmt: None,
        dependencies: deps.to_vec(),
        data_offset: None,
        file_name: None,
    }
}

/// A shop: schema "Sales Data" with a partitioned log, customers <- orders (FK), a
/// trigger function, a serial sequence, a view, comments.
fn toc() -> Toc {
    let p = Some("public");
    let s = Some("Sales Data");
    Toc {
        version: (1, 14, 0),
        format: ArchiveFormat::Custom,
        database: "db".into(),
        server_version: "15".into(),
        dump_version: "15".into(),
        int_size: 4,
        compressed: false,
        entries: vec![
            entry(1, "ENCODING", None, "ENCODING", &[]),
            entry(2, "SCHEMA", None, "Sales Data", &[]),
            entry(3, "EXTENSION", None, "pgcrypto", &[]),
            entry(4, "FUNCTION", p, "touch()", &[]),
            entry(5, "TABLE", p, "customers", &[]),
            entry(6, "SEQUENCE", p, "orders_id_seq", &[]),
            entry(7, "TABLE", p, "orders", &[3]),
            entry(8, "SEQUENCE OWNED BY", p, "orders_id_seq", &[6, 7]),
            entry(9, "DEFAULT", p, "orders id", &[6, 7]),
            entry(10, "TABLE", s, "Audit Log", &[2]),
            entry(11, "TABLE", s, "Audit Log 2024", &[2]),
            entry(12, "TABLE ATTACH", s, "Audit Log 2024", &[10, 11]),
            entry(13, "VIEW", p, "v", &[5]),
            entry(14, "TABLE DATA", p, "customers", &[5]),
            entry(15, "TABLE DATA", p, "orders", &[7]),
            entry(16, "TABLE DATA", s, "Audit Log 2024", &[11]),
            entry(17, "SEQUENCE SET", p, "orders_id_seq", &[6]),
            entry(18, "CONSTRAINT", p, "customers customers_pkey", &[5]),
            entry(19, "CONSTRAINT", p, "orders orders_pkey", &[7]),
            entry(20, "TRIGGER", p, "orders touch", &[7, 4]),
            entry(
                21,
                "FK CONSTRAINT",
                p,
                "orders orders_customer_fkey",
                &[7, 5, 18],
            ),
            entry(22, "COMMENT", p, "VIEW v", &[13]),
            entry(23, "COMMENT", None, "SCHEMA \"Sales Data\"", &[2]),
            entry(24, "ACL", p, "TABLE customers", &[5]),
            entry(25, "TABLE", p, "base", &[]),
            entry(26, "TABLE", p, "child", &[25]),
        ],
        len: 0,
    }
}

fn select(tables: &[&str], schemas: &[&str], deps: bool) -> Result<Plan> {
    build(
        &toc(),
        &Selection {
            tables: tables.iter().map(|s| s.to_string()).collect(),
            schemas: schemas.iter().map(|s| s.to_string()).collect(),
            with_dependencies: deps,
        },
    )
}

#[test]
fn a_table_comes_with_what_it_needs_and_its_foreign_key_is_listed() {
    let plan = select(&["public.orders"], &[], false).unwrap();
    assert_eq!(plan.entries, [3, 4, 6, 7, 8, 9, 15, 17, 19, 20]);
    assert_eq!(plan.left_out.len(), 1);
    assert_eq!(
        plan.left_out[0].to_string(),
        "foreign key orders_customer_fkey on public.orders (references public.customers)"
    );
    // The referenced side lists the same key.
    let plan = select(&["public.customers"], &[], false).unwrap();
    assert_eq!(plan.entries, [5, 14, 18, 24]);
    assert_eq!(plan.left_out[0].name, "orders_customer_fkey");
}

#[test]
fn with_dependencies_brings_referenced_tables_and_keeps_the_key() {
    let plan = select(&["public.orders"], &[], true).unwrap();
    assert!(plan.left_out.is_empty());
    assert!(plan.entries.contains(&21) && plan.entries.contains(&14));
    assert!(!plan.entries.contains(&13), "views are not restored");
    assert_eq!(plan.tables.len(), 2);
}

#[test]
fn a_partitioned_table_brings_its_partitions_and_a_schema_all_its_tables() {
    let plan = select(&["\"Sales Data\".\"Audit Log\""], &[], false).unwrap();
    assert_eq!(plan.entries, [2, 10, 11, 12, 16, 23]);
    let plan = select(&[], &["Sales Data"], false).unwrap();
    assert_eq!(plan.entries, [2, 10, 11, 12, 16, 23]);
    // A partition alone is restored as a table of its own.
    let plan = select(&["Sales Data.Audit Log 2024"], &[], false).unwrap();
    assert_eq!(plan.entries, [2, 11, 16, 23]);
    // An inheritance child comes with the table it inherits from.
    let plan = select(&["public.child"], &[], false).unwrap();
    assert_eq!(plan.entries, [25, 26]);
}

#[test]
fn names_are_exact_and_unknown_ones_list_the_closest() {
    let e = select(&["public.Orders"], &[], false).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)));
    assert!(e.to_string().contains("closest: public.orders"), "{e}");
    let e = select(&[], &["sales data"], false).unwrap_err();
    assert!(e.to_string().contains("closest: \"Sales Data\""), "{e}");
    // A bare name is unique here; quoted and unquoted forms agree.
    assert_eq!(select(&["orders"], &[], false).unwrap().tables.len(), 1);
    assert_eq!(
        select(&["\"public\".orders"], &[], false).unwrap().entries,
        select(&["public.orders"], &[], false).unwrap().entries
    );
    assert!(matches!(
        select(&[], &[], false).unwrap_err(),
        Error::Usage(_)
    ));
}

#[test]
fn table_specs_parse_quotes_and_dots() {
    assert_eq!(parse_table_spec("a.b").unwrap(), None);
    assert_eq!(
        parse_table_spec("\"a.b\".\"c\"").unwrap(),
        Some(vec!["a.b".to_string(), "c".to_string()])
    );
    assert_eq!(
        parse_table_spec("\"My \"\"S\"\"\".Täble").unwrap(),
        Some(vec!["My \"S\"".to_string(), "Täble".to_string()])
    );
    for bad in ["\"a", "\"\".b", "\"a\"x", "\"a\".b.c", "a.\"b"] {
        assert!(
            matches!(parse_table_spec(bad), Err(Error::Usage(_))),
            "{bad}"
        );
    }
    assert_eq!(distance("kitten", "sitting"), 3);
}
