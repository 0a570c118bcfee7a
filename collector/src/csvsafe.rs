//! CSV cells made safe to open in a spreadsheet.
//!
//! Everything in an export came from a probe, and a probe can be anyone. A cell that starts
//! with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel, LibreOffice and
//! Google Sheets (`=HYPERLINK(...)`, `=1+2.example`, DDE payloads). As OWASP recommends and
//! spreadsheet-safe exporters do, such cells get a leading `'`, which spreadsheets show as
//! text and never evaluate. Header cells are ours and are left alone. The CSV columns of this
//! collector are never negative numbers, so the rule costs no real value.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;

/// `cell`, prefixed with `'` when a spreadsheet would read it as a formula.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

/// A CSV writer of serde rows whose cells pass through [`neutralise`]. The header row comes
/// from the first row's field names, as with `csv::Writer::serialize`.
pub struct SafeWriter<W: Write> {
    inner: csv::Writer<W>,
    header_done: bool,
}

impl<W: Write> SafeWriter<W> {
    /// A writer into `w`.
    pub fn new(w: W) -> Self {
        SafeWriter {
            inner: csv::WriterBuilder::new().has_headers(false).from_writer(w),
            header_done: false,
        }
    }

    /// A writer of rows only (the caller wrote the header): for a streamed export that
    /// encodes one row at a time.
    pub fn rows_only(w: W) -> Self {
        SafeWriter {
            inner: csv::WriterBuilder::new().has_headers(false).from_writer(w),
            header_done: true,
        }
    }

    /// Write one row (and the header before the first).
    pub fn serialize<T: Serialize>(&mut self, row: T) -> csv::Result<()> {
        // Let the csv crate flatten the row (and name its columns), then read the cells back.
        let mut scratch = csv::WriterBuilder::new()
            .has_headers(!self.header_done)
            .from_writer(Vec::new());
        scratch.serialize(row)?;
        let bytes = scratch
            .into_inner()
            .map_err(|e| csv::Error::from(e.into_error()))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes.as_slice());
        for (i, record) in reader.records().enumerate() {
            let record = record?;
            if i == 0 && !self.header_done {
                self.inner.write_record(&record)?;
                self.header_done = true;
            } else {
                self.inner
                    .write_record(record.iter().map(|c| neutralise(c).into_owned()))?;
            }
        }
        Ok(())
    }

    /// Flush and return the inner writer.
    pub fn into_inner(self) -> csv::Result<W> {
        self.inner
            .into_inner()
            .map_err(|e| csv::Error::from(e.into_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Row<'a> {
        domain: &'a str,
        reason: &'a str,
        asn: u32,
    }

    #[test]
    fn formula_cells_are_prefixed_and_others_kept() {
        let mut w = SafeWriter::new(Vec::new());
        for (domain, reason) in [
            ("=1+2.example", "=HYPERLINK(\"http://x\",\"y\")"),
            ("ok.example", "+cmd|' /C calc'!A0"),
            ("-x.example", "@SUM(A1)"),
            ("tab.example", "\tx"),
            ("cr.example", "\rx"),
            ("plain.example", "timeout after ClientHello, a=b"),
        ] {
            w.serialize(Row {
                domain,
                reason,
                asn: 9198,
            })
            .unwrap();
        }
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(r.headers().unwrap(), vec!["domain", "reason", "asn"]);
        let cells: Vec<Vec<String>> = r
            .records()
            .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
            .collect();
        assert_eq!(cells[0][0], "'=1+2.example");
        assert_eq!(cells[0][1], "'=HYPERLINK(\"http://x\",\"y\")");
        assert_eq!(cells[1][0], "ok.example");
        assert_eq!(cells[1][1], "'+cmd|' /C calc'!A0");
        assert_eq!(cells[2][0], "'-x.example");
        assert_eq!(cells[2][1], "'@SUM(A1)");
        assert_eq!(cells[3][1], "'\tx");
        assert_eq!(cells[4][1], "'\rx");
        assert_eq!(
            cells[5],
            vec!["plain.example", "timeout after ClientHello, a=b", "9198"]
        );
        for row in &cells {
            for cell in row {
                assert!(
                    !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                    "{cell:?}"
                );
            }
        }
    }
}
