//! What HAProxy serves and what the certificate files hold, for the watchdog: the serial of each
//! certificate as HAProxy's `show ssl cert <file>` prints it, asked in batches (one runtime-API
//! connection per batch, the commands `;`-separated), and the serial of the leaf in
//! `<CERTS_DIR>/<id>.pem`. The reconciler compares them with the store and repairs what differs
//! (`reconciler::watchdog`).

use std::path::PathBuf;

use crate::installer::{InstallError, RuntimeApi};

/// The longest batch line: HAProxy reads a command line into one request buffer
/// (`tune.bufsize`, 16 KiB by default); half of it leaves room for long paths.
const MAX_BATCH_BYTES: usize = 8 * 1024;

/// What the watchdog found for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The serial HAProxy serves under the certificate's file name; `None` when it has no such
    /// certificate or no crt-list uses it. Files-only mode: the file's.
    pub served: Option<String>,
    /// The serial of the leaf in the certificate's file; `None` when missing or unreadable.
    pub file: Option<String>,
}

/// Asks `api` which certificate it holds under each of `files` (HAProxy's names) and reads the
/// leaf serial of each of `paths` (ours), in order. Without a runtime API (files-only mode) what
/// is served is what the file holds.
pub(crate) async fn observe(
    api: Option<&RuntimeApi<'_>>,
    files: &[String],
    paths: Vec<PathBuf>,
) -> Result<Vec<Observed>, InstallError> {
    let on_disk = tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).ok()?;
                crate::pki::chain_meta(&text, 0).ok().map(|m| m.serial)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| InstallError::File {
        path: PathBuf::from("(certificate files)"),
        source: std::io::Error::other(e),
    })?;
    let served = match api {
        None => on_disk.clone(),
        Some(api) => {
            let mut served = Vec::with_capacity(files.len());
            for batch in batches(files) {
                let line = batch
                    .iter()
                    .map(|f| format!("show ssl cert {f}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let answer = api.send(&line).await?;
                let serials =
                    parse_batch(&answer, batch).map_err(|message| InstallError::Refused {
                        command: format!("show ssl cert (a batch of {})", batch.len()),
                        message,
                    })?;
                served.extend(serials);
            }
            served
        }
    };
    Ok(served
        .into_iter()
        .zip(on_disk)
        .map(|(served, file)| Observed { served, file })
        .collect())
}

/// `files` cut into batches whose command line stays under [`MAX_BATCH_BYTES`].
fn batches(files: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, f) in files.iter().enumerate() {
        let cost = f.len() + "show ssl cert ; ".len();
        if i > start && bytes + cost > MAX_BATCH_BYTES {
            out.push(&files[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += cost;
    }
    if start < files.len() {
        out.push(&files[start..]);
    }
    out
}

/// The serial each `show ssl cert FILE` of a batch answered, in order. Each answer ends with an
/// empty line; `None` for a file HAProxy does not know ("Can't display the certificate: Not
/// found ...") or that no crt-list uses (`Status: Unused`). An answer that does not fit
/// (another count, another file, no serial) is an error, never a finding.
fn parse_batch(answer: &str, files: &[String]) -> Result<Vec<Option<String>>, String> {
    let blocks: Vec<&str> = answer
        .split("\n\n")
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect();
    if blocks.len() != files.len() {
        return Err(format!(
            "{} answers to {} commands: {}",
            blocks.len(),
            files.len(),
            answer.lines().next().unwrap_or("").trim()
        ));
    }
    let field = |block: &str, name: &str| {
        block
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    blocks
        .iter()
        .zip(files)
        .map(|(block, file)| match field(block, "Filename:") {
            None if block.starts_with("Can't display the certificate") => Ok(None),
            None => Err(format!(
                "for {file}: {}",
                block.lines().next().unwrap_or("")
            )),
            Some(name) if name != *file => Err(format!("an answer about {name} for {file}")),
            Some(_) if field(block, "Status:").as_deref() == Some("Unused") => Ok(None),
            Some(_) => field(block, "Serial:")
                .map(|s| Some(s.to_ascii_uppercase()))
                .ok_or_else(|| format!("no Serial: line for {file}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HAProxy 2.6's answer to `show ssl cert A; show ssl cert B; show ssl cert C` (recorded),
    /// B unknown.
    const ANSWER: &str = "Filename: /c/a.pem\nStatus: Used\nSerial: 31F9210524CEDA205003E11522A094D165ADEAAC\nnotBefore: Nov 26 10:19:37 2026 GMT\nnotAfter: Nov 29 10:19:37 2026 GMT\nSubject Alternative Name: \nAlgorithm: EC256\nSHA1 FingerPrint: 42BC8619E84C7BB7904F20C02250CBF44ADEBB43\nSubject: /CN=a.test\nIssuer: /CN=a.test\nOCSP Response Key: \n\nCan't display the certificate: Not found or the certificate is a bundle!\n\nFilename: /c/c.pem\nStatus: Unused\nSerial: 0A\n\n";

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_batch_answer_is_read_per_file_and_checked() {
        let files = names(&["/c/a.pem", "/c/b.pem", "/c/c.pem"]);
        assert_eq!(
            parse_batch(ANSWER, &files).unwrap(),
            vec![
                Some("31F9210524CEDA205003E11522A094D165ADEAAC".into()),
                None,
                None
            ]
        );
        let e = parse_batch(ANSWER, &files[..2]).unwrap_err();
        assert!(e.starts_with("3 answers to 2 commands"), "{e}");
        let swapped = names(&["/c/b.pem", "/c/a.pem", "/c/c.pem"]);
        let e = parse_batch(ANSWER, &swapped).unwrap_err();
        assert!(e.contains("an answer about /c/a.pem for /c/b.pem"), "{e}");
        let e = parse_batch("Permission denied\n\n", &files[..1]).unwrap_err();
        assert!(e.contains("Permission denied"), "{e}");
    }

    /// HAProxy 3.4.7's answer (recorded) to `show ssl cert A; show ssl cert B` for a file loaded
    /// at start, B unknown: 3.2+ add `Crt filename:`/`Key filename:`/... lines, 3.4 `Option:`.
    const ANSWER_3_4: &str = "Filename: /c/a.pem\nCrt filename: /c/a.pem\nKey filename: /c/a.pem\nOCSP filename: /c/a.pem.ocsp\nSCTL filename: /c/a.pem.sctl\nOption: ocsp-update off\nOption: jwt off\nStatus: Used\nSerial: 785AF9BF5362D9F9A59378F94CCD2710779BFC62\nnotBefore: Nov 26 15:02:12 2026 GMT\nnotAfter: Nov 27 15:02:12 2026 GMT\nSubject Alternative Name: \nAlgorithm: EC256\nSHA1 FingerPrint: 21E524A1AE61EAF7CA9F0F65E47F646AE2996745\nSubject: /CN=x\nIssuer: /CN=x\nOCSP Response Key: \n\nCan't display the certificate: Not found or the certificate is a bundle!\n\n";

    #[test]
    fn a_haproxy_3_4_answer_is_read_as_well() {
        let files = names(&["/c/a.pem", "/c/b.pem"]);
        assert_eq!(
            parse_batch(ANSWER_3_4, &files).unwrap(),
            vec![
                Some("785AF9BF5362D9F9A59378F94CCD2710779BFC62".into()),
                None
            ]
        );
    }

    #[test]
    fn batches_keep_every_file_in_order_under_the_line_limit() {
        let files: Vec<String> = (0..500)
            .map(|i| format!("/etc/haproxy/certs/site-{i}.example.com.pem"))
            .collect();
        let b = batches(&files);
        assert!(b.len() > 1);
        assert_eq!(b.concat(), files);
        for batch in &b {
            let line: usize = batch.iter().map(|f| f.len() + 16).sum();
            assert!(line <= MAX_BATCH_BYTES, "{line}");
        }
        assert!(batches(&[]).is_empty());
    }
}
