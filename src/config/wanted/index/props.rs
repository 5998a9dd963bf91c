//! The reads by what changed ([`WantedSet::read_changes`], [`WantedSet::check`]) against reads
//! in full, over generated DOMAINS_FILE edits and runtime additions: the same certificates and
//! the same errors.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// Lines of DOMAINS_FILE: valid ones, comments, blank, several entries, bad names, names listed
/// twice (also in another spelling), options, challenges that need a hook, CRLF.
const LINES: &[&str] = &[
    "a.test",
    "b.test,www.b.test",
    "c.test;d.test",
    "# comment",
    "",
    "  e.test  # e",
    "A.TEST",
    "bad_name.test",
    "f.test profile=short",
    "g.test,*.g.test challenge=dns-01",
    "h.test\r",
    "xn--bcher-kva.test",
    "bücher.test",
    "i.test,www.a.test",
    "j.test challenge=tls-alpn-01",
    "k.test,www.k.test",
    "k.test",
    "z.test",
];

/// Certificates added at runtime (names and options as `domains add` keeps them).
const ADDED: &[&[&str]] = &[
    &["y.test"],
    &["a.test"],
    &["w.test", "www.w.test"],
    &["b.test"],
    &["x.test", "profile=p"],
    &["www.k.test"],
    &["bad_name.test"],
];

const DOMAINS: &[&str] = &["", "z.test", "q.test,www.q.test"];

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, usize),
    Delete(usize),
    Replace(usize, usize),
    /// The last line ends with a newline or not.
    LastNewline,
}

fn edit() -> impl Strategy<Value = Edit> {
    let line = 0..LINES.len();
    prop_oneof![
        (any::<usize>(), line.clone()).prop_map(|(at, l)| Edit::Insert(at, l)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), line).prop_map(|(at, l)| Edit::Replace(at, l)),
        Just(Edit::LastNewline),
    ]
}

fn added() -> impl Strategy<Value = Vec<Vec<String>>> {
    prop::collection::vec(0..ADDED.len(), 0..3).prop_map(|picks| {
        picks
            .into_iter()
            .map(|i| ADDED[i].iter().map(|s| s.to_string()).collect())
            .collect()
    })
}

struct File {
    lines: Vec<&'static str>,
    last_newline: bool,
}

impl File {
    fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        if self.last_newline && !self.lines.is_empty() {
            text.push('\n');
        }
        text
    }

    fn apply(&mut self, edit: &Edit) {
        let len = self.lines.len();
        match *edit {
            Edit::Insert(at, l) => self.lines.insert(at % (len + 1), LINES[l]),
            Edit::Delete(at) if len > 0 => {
                self.lines.remove(at % len);
            }
            Edit::Replace(at, l) if len > 0 => self.lines[at % len] = LINES[l],
            Edit::LastNewline => self.last_newline = !self.last_newline,
            _ => {}
        }
    }
}

/// The certificates by id.
fn by_id(specs: &[CertSpec]) -> BTreeMap<String, CertSpec> {
    specs
        .iter()
        .map(|s| (s.id().to_string(), s.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn reads_by_changes_answer_as_reads_in_full(
        domains in 0..DOMAINS.len(),
        hooks in any::<[bool; 2]>(),
        first in prop::collection::vec(0..LINES.len(), 0..12),
        first_added in added(),
        steps in prop::collection::vec((edit(), added()), 1..8),
        // How many changes are read by changes (fewer: in full).
        max in prop_oneof![Just(1000usize), 0..4usize],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("domains");
        let mut file = File { lines: first.iter().map(|&l| LINES[l]).collect(), last_newline: true };
        std::fs::write(&path, file.text()).unwrap();
        let w = WantedSet::new(DOMAINS[domains], Some(path.clone()), hooks);
        // What the reader applied: the digest of its sources and its certificates by id.
        let mut applied: Option<(u64, BTreeMap<String, CertSpec>)> = None;
        if let Ok((digest, Some(specs))) = w.read_since(&first_added, None) {
            applied = Some((digest, by_id(&specs)));
        }
        for (edit, added) in &steps {
            file.apply(edit);
            std::fs::write(&path, file.text()).unwrap();
            let full = w.read(added);
            prop_assert_eq!(w.check(added), full.clone().map(drop));
            let Some((digest, mut state)) = applied.take() else {
                if let Ok((digest, Some(specs))) = w.read_since(added, None) {
                    prop_assert_eq!(Ok(&specs), full.as_ref());
                    applied = Some((digest, by_id(&specs)));
                }
                continue;
            };
            match w.read_changes(added, digest, max) {
                Err(e) => {
                    prop_assert_eq!(Err(e), full);
                    // The running set stays.
                    applied = Some((digest, state));
                }
                Ok((now, Reading::Unchanged)) => {
                    prop_assert_eq!(now, digest);
                    prop_assert_eq!(&state, &by_id(&full.unwrap()));
                    applied = Some((now, state));
                }
                Ok((now, Reading::All(specs))) => {
                    prop_assert_eq!(Ok(&specs), full.as_ref());
                    applied = Some((now, by_id(&specs)));
                }
                Ok((now, Reading::Changes(changes))) => {
                    let full = full.unwrap();
                    // A certificate is either still listed (maybe changed) or gone.
                    prop_assert!(!changes.specs.iter().any(|s| changes.gone.contains(s.id())));
                    for id in &changes.gone {
                        prop_assert!(state.remove(id.as_str()).is_some(), "{id} was listed");
                    }
                    for spec in changes.specs {
                        state.insert(spec.id().to_string(), spec);
                    }
                    prop_assert_eq!(changes.total, full.len());
                    prop_assert_eq!(&state, &by_id(&full));
                    applied = Some((now, state));
                }
            }
        }
    }
}

/// A reload that appends, edits or removes a line parses that line only, and says what it
/// changed; a name listed twice is the read in full's error. 20,000 certificates named as the
/// scale benchmark's: FxHash gave some of their names one hash, and the index was not kept.
#[test]
fn a_changed_line_is_read_alone() {
    const N: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("domains");
    let lines: String = (0..N)
        .map(|i| format!("s{i}.example.test,www.s{i}.example.test\n"))
        .collect();
    std::fs::write(&path, &lines).unwrap();
    let w = WantedSet::new("", Some(path.clone()), [false, false]);
    let (d0, _) = w.read_since(&[], None).unwrap();
    let ids =
        |specs: &[CertSpec]| -> Vec<String> { specs.iter().map(|s| s.id().to_string()).collect() };
    // Appended.
    std::fs::write(&path, format!("{lines}new.test\n")).unwrap();
    let (d1, Reading::Changes(c)) = w.read_changes(&[], d0, 1000).unwrap() else {
        panic!("read in full")
    };
    assert_eq!(
        (ids(&c.specs), c.gone.len(), c.total),
        (vec!["new.test".to_string()], 0, N + 1)
    );
    // Edited in the middle: the line's certificate is there, with its new names.
    let edited = lines.replace(
        "\ns50.example.test,www.s50.example.test\n",
        "\ns50.example.test\n",
    );
    std::fs::write(&path, format!("{edited}new.test\n")).unwrap();
    let (d2, Reading::Changes(c)) = w.read_changes(&[], d1, 1000).unwrap() else {
        panic!("read in full")
    };
    assert_eq!(c.specs.len(), 1);
    assert_eq!(c.specs[0].names().as_slice(), ["s50.example.test"]);
    assert!(c.gone.is_empty());
    // Removed, and one added at runtime.
    std::fs::write(&path, &edited).unwrap();
    let added = [vec!["rt.test".to_string()]];
    let (d3, Reading::Changes(c)) = w.read_changes(&added, d2, 1000).unwrap() else {
        panic!("read in full")
    };
    assert_eq!(ids(&c.specs), ["rt.test"]);
    assert_eq!(c.gone, [CertId::parse("new.test").unwrap()]);
    assert_eq!(c.total, N + 1);
    // `domains add` of a configured name: the read in full's error.
    let again = [
        vec!["rt.test".to_string()],
        vec!["www.s7.example.test".to_string()],
    ];
    assert_eq!(w.check(&again), w.read(&again).map(drop));
    assert!(w.check(&again).unwrap_err()[0].contains("www.s7.example.test"));
    assert_eq!(w.check(&added), Ok(()));
    // A name listed twice in the file: the read in full's error, with its line.
    std::fs::write(&path, format!("{edited}www.s3.example.test\n")).unwrap();
    let e = w.read_changes(&added, d3, 1000).err().unwrap();
    assert_eq!(Err(e.clone()), w.read(&added));
    assert!(
        e[0].contains("\"www.s3.example.test\" is listed twice"),
        "{e:?}"
    );
    // Unchanged sources: nothing parsed.
    std::fs::write(&path, &edited).unwrap();
    assert!(matches!(
        w.read_changes(&added, d3, 1000),
        Ok((_, Reading::Unchanged))
    ));
}

#[test]
fn changed_lines_are_whole_lines() {
    let table: &[(&str, &str, (usize, usize, usize))] = &[
        ("a\nb\n", "a\nb\nc\n", (4, 4, 6)),
        ("a\nb", "a\nb\nc\n", (2, 3, 6)),
        ("x\nb\n", "y\nab\n", (0, 4, 5)),
        ("a\nbb\nc\n", "a\nb\nc\n", (2, 5, 4)),
        ("a\nb\nc\n", "a\nc\n", (2, 4, 2)),
        ("same\n", "same\n", (5, 5, 5)),
        ("", "a\n", (0, 0, 2)),
    ];
    for &(old, new, want) in table {
        assert_eq!(changed_lines(old, new), want, "{old:?} -> {new:?}");
    }
    // Long texts, compared a block at a time.
    let old: String = (0..1000).map(|i| format!("line{i}\n")).collect();
    let new = old.replace("line500\n", "line500x\n");
    let (start, old_end, new_end) = changed_lines(&old, &new);
    assert_eq!(
        (&old[start..old_end], &new[start..new_end]),
        ("line500\n", "line500x\n")
    );
}
