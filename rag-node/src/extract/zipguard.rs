//! Zip containers (DOCX, XLSX, ODS): format detection and zip-bomb limits.
//!
//! Declared sizes in the central directory are checked before anything is inflated, and members
//! we inflate ourselves are read through a hard cap, so a lying directory cannot get past either.

use std::io::{Cursor, Read};

use zip::ZipArchive;

use super::{ExtractError, Format, Limits};

pub(crate) fn open(
    bytes: &[u8],
    format: Format,
) -> Result<ZipArchive<Cursor<&[u8]>>, ExtractError> {
    ZipArchive::new(Cursor::new(bytes)).map_err(|e| ExtractError::malformed(format, e))
}

pub(crate) fn detect_zip_format(bytes: &[u8]) -> Result<Format, ExtractError> {
    let mut zip = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| ExtractError::Unsupported(format!("unreadable zip archive: {e}")))?;
    let has = |zip: &ZipArchive<Cursor<&[u8]>>, name: &str| zip.index_for_name(name).is_some();
    if has(&zip, "word/document.xml") {
        return Ok(Format::Docx);
    }
    if has(&zip, "xl/workbook.xml") {
        return Ok(Format::Xlsx);
    }
    if has(&zip, "mimetype") {
        let mut m = String::new();
        if let Ok(f) = zip.by_name("mimetype") {
            let _ = f.take(200).read_to_string(&mut m);
        }
        if m.trim() == "application/vnd.oasis.opendocument.spreadsheet" {
            return Ok(Format::Ods);
        }
        return Err(ExtractError::Unsupported(format!(
            "OpenDocument type {:?}",
            m.trim()
        )));
    }
    Err(ExtractError::Unsupported(
        "zip archive that is not DOCX, XLSX or ODS".into(),
    ))
}

/// Rejects archives whose declared contents exceed the limits.
pub(crate) fn check_limits(
    zip: &mut ZipArchive<Cursor<&[u8]>>,
    limits: &Limits,
) -> Result<(), ExtractError> {
    let mut total: u64 = 0;
    for i in 0..zip.len() {
        let f = zip
            .by_index_raw(i)
            .map_err(|e| ExtractError::LimitExceeded(format!("unreadable zip member: {e}")))?;
        let (size, packed) = (f.size(), f.compressed_size().max(1));
        total = total.saturating_add(size);
        if size > 1 << 20 && size / packed > limits.max_compression_ratio {
            return Err(ExtractError::LimitExceeded(format!(
                "zip member {} expands {}x (max {}x): possible zip bomb",
                f.name(),
                size / packed,
                limits.max_compression_ratio
            )));
        }
    }
    if total > limits.max_uncompressed_bytes {
        return Err(ExtractError::LimitExceeded(format!(
            "archive expands to {total} bytes (max {})",
            limits.max_uncompressed_bytes
        )));
    }
    Ok(())
}

/// Reads one member, never inflating more than `cap` bytes whatever the directory claims.
pub(crate) fn read_member(
    zip: &mut ZipArchive<Cursor<&[u8]>>,
    name: &str,
    cap: u64,
    format: Format,
) -> Result<Vec<u8>, ExtractError> {
    let f = zip
        .by_name(name)
        .map_err(|e| ExtractError::malformed(format, format!("{name}: {e}")))?;
    let mut out = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| ExtractError::malformed(format, format!("{name}: {e}")))?;
    if out.len() as u64 > cap {
        return Err(ExtractError::LimitExceeded(format!(
            "{name} expands beyond {cap} bytes"
        )));
    }
    Ok(out)
}
