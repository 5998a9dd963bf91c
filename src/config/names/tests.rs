//! Tests of certificate names: normalization, the name list, the spec, file names and ids.

use super::*;

#[test]
fn names_refuse_bad_duplicate_and_no_names_with_every_reason() {
    let e = Names::parse(["*.a.test", "b.test", "B.test", "10.0.0.1"]).unwrap_err();
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[0].starts_with("\"*.a.test\" is a wildcard"), "{e:?}");
    assert!(e[1].contains("\"b.test\" is listed twice"), "{e:?}");
    assert!(e[2].contains("IP address"), "{e:?}");
    assert!(Names::parse(Vec::<String>::new()).unwrap_err()[0].contains("no names"));
}

/// The longest valid name: 253 characters, labels of 63.
pub(crate) fn longest_name(tag: char) -> String {
    let label = |c: char| std::iter::repeat_n(c, 63).collect::<String>();
    let name = format!(
        "{}.{}.{}.{}.test",
        label(tag),
        label('b'),
        label('c'),
        label('d')
    );
    name[name.len() - 253..].trim_start_matches('.').to_string()
}

#[test]
fn every_valid_id_has_a_file_name_that_fits_name_max() {
    let long = longest_name('a');
    assert_eq!(normalize_name(&long).unwrap().len(), long.len());
    for len in [
        6,
        100,
        MAX_PLAIN_FILE_ID,
        MAX_PLAIN_FILE_ID + 1,
        250,
        long.len(),
    ] {
        let id = &long[long.len() - len..].trim_start_matches('.');
        let id = normalize_name(id).unwrap();
        let file = cert_file_name(&id);
        // The file, its temporary twin (installer::write_atomic) and the hook's lineage
        // directory `live/<id>/` (hook::lineage_dir).
        assert!(format!(".{file}.tmp").len() <= 255, "{id}: {file}");
        assert!(id.len() <= 255);
        assert_eq!(file, cert_file_name(&id), "the same at every start");
        if id.len() <= MAX_PLAIN_FILE_ID {
            assert_eq!(file, format!("{id}.pem"));
        } else {
            assert!(
                file.starts_with(&id[..200]) && file.ends_with(".pem"),
                "{file}"
            );
            assert_eq!(file.len(), 237);
            assert!(file.contains('_'), "never another id's plain name");
        }
    }
    // Two long ids that share their first 200 characters get two files.
    let (a, b) = (
        longest_name('a'),
        longest_name('a').replace("d.test", "e.test"),
    );
    assert_eq!(a[..200], b[..200]);
    assert_ne!(cert_file_name(&a), cert_file_name(&b));
    // A 253-character id really is written (the file and its temporary file).
    let dir = tempfile::tempdir().unwrap();
    crate::installer::write_atomic(dir.path(), &cert_file_name(&a), b"x").unwrap();
    assert!(dir.path().join(cert_file_name(&a)).is_file());
}

#[test]
fn an_id_is_one_normalized_name() {
    assert_eq!(CertId::parse("A.Test.").unwrap().as_str(), "a.test");
    assert_eq!(CertId::parse("a.test").unwrap().to_string(), "a.test");
    for bad in ["../etc/passwd", "a.test b", "localhost", "*.a.test", ""] {
        let e = CertId::parse(bad).unwrap_err();
        assert!(e.starts_with(&format!("{bad:?} ")), "{e}");
    }
}
