//! Spreadsheets (XLSX, XLS, ODS) with calamine: every sheet, each row rendered with its header
//! names and located by sheet name and spreadsheet row number.

use std::io::Cursor;

use calamine::{open_workbook_from_rs, Data, Ods, Range, Reader, Xls, Xlsx};

use super::{text::render_rows, zipguard, Block, ExtractError, Extracted, Format, Limits};

pub(crate) fn extract(
    bytes: &[u8],
    format: Format,
    limits: &Limits,
) -> Result<Extracted, ExtractError> {
    if matches!(format, Format::Xlsx | Format::Ods) {
        let mut zip = zipguard::open(bytes, format)?;
        zipguard::check_limits(&mut zip, limits)?;
    }
    let cursor = Cursor::new(bytes);
    let err = |e: &dyn std::fmt::Display| ExtractError::malformed(format, e);
    let sheets: Vec<(String, Range<Data>)> = match format {
        Format::Xlsx => read_all(
            open_workbook_from_rs::<Xlsx<_>, _>(cursor).map_err(|e| err(&e))?,
            format,
        )?,
        Format::Xls => read_all(
            open_workbook_from_rs::<Xls<_>, _>(cursor).map_err(|e| err(&e))?,
            format,
        )?,
        Format::Ods => read_all(
            open_workbook_from_rs::<Ods<_>, _>(cursor).map_err(|e| err(&e))?,
            format,
        )?,
        _ => unreachable!("sheet::extract called for {format:?}"),
    };
    let mut blocks: Vec<Block> = Vec::new();
    let mut total_rows: u64 = 0;
    for (name, range) in &sheets {
        total_rows += range.height() as u64;
        if total_rows > limits.max_rows {
            return Err(ExtractError::LimitExceeded(format!(
                "more than {} rows across sheets",
                limits.max_rows
            )));
        }
        let rows: Vec<Vec<String>> = range
            .rows()
            .map(|r| r.iter().map(cell_text).collect())
            .collect();
        let first_row = range.start().map(|(r, _)| r + 1).unwrap_or(1);
        blocks.extend(render_rows(&rows, Some(name), first_row));
    }
    Ok(Extracted {
        format,
        pages: sheets.len() as u32,
        blocks,
    })
}

fn read_all<'a, R>(
    mut workbook: R,
    format: Format,
) -> Result<Vec<(String, Range<Data>)>, ExtractError>
where
    R: Reader<Cursor<&'a [u8]>>,
    R::Error: std::fmt::Display,
{
    let mut out = Vec::new();
    for name in workbook.sheet_names() {
        let range = workbook
            .worksheet_range(&name)
            .map_err(|e| ExtractError::malformed(format, format!("sheet {name:?}: {e}")))?;
        out.push((name, range));
    }
    Ok(out)
}

fn cell_text(d: &Data) -> String {
    match d {
        Data::Empty => String::new(),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        other => other.to_string(),
    }
}
