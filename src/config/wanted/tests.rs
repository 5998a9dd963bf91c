//! Tests of the wanted set: DOMAINS and DOMAINS_FILE syntax, errors by place, combining the
//! sources, re-reads and runtime additions.

use super::*;
use crate::cli::RawSettings;
use crate::config::{Config, Need};

fn names(specs: &[CertSpec]) -> Vec<Vec<&str>> {
    specs
        .iter()
        .map(|s| s.names().iter().map(String::as_str).collect())
        .collect()
}

#[test]
fn domains_syntax_of_the_old_stack() {
    let table: &[(&str, Vec<Vec<&str>>)] = &[
        (
            "a.com,www.a.com;b.com",
            vec![vec!["a.com", "www.a.com"], vec!["b.com"]],
        ),
        (
            " a.com , www.a.com ; ; b.com ;",
            vec![vec!["a.com", "www.a.com"], vec!["b.com"]],
        ),
        ("A.COM.", vec![vec!["a.com"]]),
        (",,a.com,,;", vec![vec!["a.com"]]),
        ("bücher.example", vec![vec!["xn--bcher-kva.example"]]),
        ("", vec![]),
        (" ; ", vec![]),
    ];
    for (input, want) in table {
        let got = parse_domains(input).unwrap_or_else(|e| panic!("{input:?}: {e:?}"));
        assert_eq!(&names(&got), want, "{input:?}");
        for s in &got {
            assert_eq!(s.id().as_str(), s.names()[0]);
        }
    }
}

#[test]
fn bad_names_are_named_with_the_reason() {
    let table: &[(&str, &str)] = &[
        ("*.a.com", "wildcard"),
        ("a.com,*.a.com", "wildcard"),
        ("192.0.2.1", "IP address"),
        ("[::1]", "IP address"),
        ("localhost", "single label"),
        ("a..com", "empty label"),
        ("-a.com", "starts or ends with '-'"),
        ("a_b.com", "contains '_'"),
        ("a.123", "all-numeric"),
        (
            "a.com;b.com,a.com",
            "listed twice (also in certificate \"a.com\")",
        ),
        ("a.com,A.com", "twice in the same certificate"),
    ];
    for (input, reason) in table {
        let errs = parse_domains(input).expect_err(input);
        assert!(
            errs.iter().any(|e| e.contains(reason)),
            "{input:?}: {errs:?}"
        );
    }
    let long_label = format!("{}.com", "a".repeat(64));
    assert!(parse_domains(&long_label).unwrap_err()[0].contains("63 at most"));
    let long_name = format!("{}com", "abcdefghi.".repeat(26));
    assert!(parse_domains(&long_name).unwrap_err()[0].contains("253 at most"));
    // Every bad entry is reported, not only the first, each with where it is.
    let errs = parse_domains("*.a.com;1.2.3.4;ok.com").unwrap_err();
    assert_eq!(errs.len(), 2);
    assert!(
        errs[1].starts_with("DOMAINS entry \"1.2.3.4\": \"1.2.3.4\" is an IP address"),
        "{errs:?}"
    );
}

#[test]
fn domains_file_lines_comments_and_errors_by_line() {
    let specs =
        parse_domains_file("# shop\na.com, www.a.com\n\n b.com # legacy\nc.com;d.com\n").unwrap();
    assert_eq!(
        names(&specs),
        vec![
            vec!["a.com", "www.a.com"],
            vec!["b.com"],
            vec!["c.com"],
            vec!["d.com"]
        ]
    );
    let errs = parse_domains_file("a.com\n*.b.com\nc.com,a.com\n").unwrap_err();
    assert!(
        errs[0].starts_with("DOMAINS_FILE line 2: \"*.b.com\" is a wildcard"),
        "{errs:?}"
    );
    assert!(errs[1].contains("\"a.com\" is listed twice"), "{errs:?}");
}

/// A daemon configuration with DOMAINS="a.com" and a DOMAINS_FILE holding `content`.
fn with_domains_file(content: &str) -> (tempfile::TempDir, PathBuf, WantedSet) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("domains");
    std::fs::write(&file, content).unwrap();
    let raw = RawSettings {
        domains: Some("a.com".into()),
        domains_file: Some(file.clone()),
        ..Default::default()
    };
    let (c, w) = Config::from_raw(&raw, Need::Daemon).unwrap();
    assert_eq!(c.domains_file.as_deref(), Some(file.as_path()));
    assert_eq!(w.domains_file(), Some(file.as_path()));
    (dir, file, w)
}

#[test]
fn a_re_read_of_the_same_sources_is_not_parsed_again() {
    let (_dir, file, w) = with_domains_file("b.com\n");
    let (d1, specs) = w.read_since(&[], None).unwrap();
    assert_eq!(names(&specs.unwrap()), vec![vec!["a.com"], vec!["b.com"]]);
    assert!(w.read_since(&[], Some(d1)).unwrap().1.is_none());
    // A comment is a change of bytes: parsed (the specs then say nothing changed).
    std::fs::write(&file, "# x\nb.com\n").unwrap();
    let (d2, specs) = w.read_since(&[], Some(d1)).unwrap();
    assert_ne!(d1, d2);
    assert_eq!(names(&specs.unwrap()), vec![vec!["a.com"], vec!["b.com"]]);
    // So is an addition at runtime.
    let added = [vec!["c.com".to_string()]];
    assert!(w.read_since(&added, Some(d2)).unwrap().1.is_some());
    // An unreadable file is an error every time, whatever was read before.
    std::fs::remove_file(&file).unwrap();
    assert!(w.read_since(&[], Some(d2)).is_err());
}

#[test]
fn domains_and_domains_file_combine_without_duplicates() {
    let (_dir, file, w) = with_domains_file("b.com\n");
    assert_eq!(names(w.initial()), vec![vec!["a.com"], vec!["b.com"]]);
    std::fs::write(&file, "c.com\nwww.a.com,a.com\n").unwrap();
    let errs = w.read(&[]).unwrap_err();
    assert!(
        errs[0].contains("also in certificate \"a.com\" of DOMAINS"),
        "{errs:?}"
    );
    std::fs::remove_file(&file).unwrap();
    assert!(w.read(&[]).unwrap_err()[0].starts_with("DOMAINS_FILE "));
    // DOMAINS_FILE alone is enough.
    std::fs::write(&file, "b.com\n").unwrap();
    let only_file = RawSettings {
        domains: None,
        domains_file: Some(file),
        ..Default::default()
    };
    assert!(Config::from_raw(&only_file, Need::Daemon).is_ok());
    let mut w = w;
    let initial = w.take_initial();
    assert_eq!(names(&initial.specs), vec![vec!["a.com"], vec!["b.com"]]);
    assert!(w.initial().is_empty());
}

#[test]
fn added_certificates_join_the_configured_ones_without_sharing_a_name() {
    let (_, w) = Config::from_raw(
        &RawSettings {
            domains: Some("a.test,www.a.test".into()),
            ..Default::default()
        },
        Need::Daemon,
    )
    .unwrap();
    let specs = w
        .read(&[vec!["b.test".into(), "www.b.test".into()]])
        .unwrap();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[1].id().as_str(), "b.test");
    let e = w
        .read(&[vec!["b.test".into(), "www.a.test".into()]])
        .unwrap_err();
    assert!(
        e[0].contains("www.a.test") && e[0].contains("domains remove b.test"),
        "{e:?}"
    );
}

#[test]
fn a_bad_domains_is_reported_when_the_set_is_read_by_a_store_only_command() {
    let raw = RawSettings {
        domains: Some("*.a.test".into()),
        ..Default::default()
    };
    assert!(Config::from_raw(&raw, Need::Daemon).is_err());
    let (_, w) = Config::from_raw(&raw, Need::StoreOnly).unwrap();
    assert!(w.initial().is_empty());
    assert!(w.read(&[]).unwrap_err()[0].contains("wildcard"));
    assert!(w.read_since(&[], Some(0)).is_err());
}

#[test]
fn the_start_up_read_is_taken_as_it_is_only_while_the_sources_are_the_same() {
    let (_dir, file, mut w) = with_domains_file("b.com\nc.com\n");
    let initial = w.take_initial();
    assert_eq!(initial.specs.len(), 3);
    assert!(w.still_reads_as(initial.sources, &[]));
    // Certificates added at runtime are other sources.
    assert!(!w.still_reads_as(initial.sources, &[vec!["d.com".into()]]));
    // So is any change of bytes, even of the same length, and an unreadable file.
    std::fs::write(&file, "b.com\nd.com\n").unwrap();
    assert!(!w.still_reads_as(initial.sources, &[]));
    std::fs::write(&file, "b.com\nc.com\nd.com\n").unwrap();
    assert!(!w.still_reads_as(initial.sources, &[]));
    std::fs::remove_file(&file).unwrap();
    assert!(!w.still_reads_as(initial.sources, &[]));
    // The same bytes again: the same sources.
    std::fs::write(&file, "b.com\nc.com\n").unwrap();
    assert!(w.still_reads_as(initial.sources, &[]));
    // A digest of other sources is never taken for this one.
    assert!(!w.still_reads_as(initial.sources ^ 1, &[]));
    // Once read with other sources, the index is of those.
    std::fs::write(&file, "b.com\n").unwrap();
    let (d, _) = w.read_since(&[], None).unwrap();
    assert!(!w.still_reads_as(initial.sources, &[]));
    assert!(w.still_reads_as(d, &[]));
}

#[test]
fn a_file_is_compared_block_by_block_and_read_from_the_line_that_differs() {
    use index::{Divergence, Packed};
    let diverge = |path: &Path, content: &str| Packed::of(content).diverge(path, None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    // Many blocks (13 bytes under test).
    let content: String = (0..200).map(|i| format!("s{i}.example.test\n")).collect();
    let from = |start: usize, middle: &str, tail: usize| Divergence::From {
        start,
        middle: middle.to_string(),
        tail,
    };
    std::fs::write(&path, &content).unwrap();
    assert_eq!(diverge(&path, &content).unwrap(), Divergence::Same);
    // Appended: only the new line is read.
    std::fs::write(&path, format!("{content}new.test\n")).unwrap();
    assert_eq!(
        diverge(&path, &content).unwrap(),
        from(content.len(), "new.test\n", 0)
    );
    // A change in a line: from that line's start, the line alone (each line is a block here),
    // and the lines after it alike.
    let line = content.find("s150.").unwrap();
    let end = content[line..].find('\n').unwrap() + line + 1;
    let changed = content.replacen("s150.", "t150.", 1);
    std::fs::write(&path, &changed).unwrap();
    assert_eq!(
        diverge(&path, &content).unwrap(),
        from(line, &changed[line..end], content.len() - end)
    );
    // A line removed, and one inserted: the same.
    std::fs::write(&path, format!("{}{}", &content[..line], &content[end..])).unwrap();
    assert_eq!(
        diverge(&path, &content).unwrap(),
        from(line, "", content.len() - end)
    );
    let inserted = format!("{}new.test\n{}", &content[..line], &content[line..]);
    std::fs::write(&path, inserted).unwrap();
    assert_eq!(
        diverge(&path, &content).unwrap(),
        from(line, "new.test\n", content.len() - line)
    );
    // Cut short, in the middle of a line, and emptied.
    std::fs::write(&path, &content[..line + 3]).unwrap();
    assert_eq!(
        diverge(&path, &content).unwrap(),
        from(line, &content[line..line + 3], 0)
    );
    std::fs::write(&path, "").unwrap();
    assert_eq!(diverge(&path, &content).unwrap(), from(0, "", 0));
    // The first byte differs: the first line, then the rest alike.
    std::fs::write(&path, format!("x{content}")).unwrap();
    let first = content.find('\n').unwrap() + 1;
    assert_eq!(
        diverge(&path, &content).unwrap(),
        from(0, &format!("x{}", &content[..first]), content.len() - first)
    );
    // Bytes that are not UTF-8 after the point of difference, and no file: errors.
    std::fs::write(&path, [content.as_bytes(), &[0xff]].concat()).unwrap();
    assert!(diverge(&path, &content).is_err());
    std::fs::remove_file(&path).unwrap();
    assert!(diverge(&path, &content).is_err());
}
