//! Test documents: PDF, DOCX and XLSX produced by LibreOffice from text written here, a real PDF
//! shipped by a Debian package, plain formats, and hostile files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Expect {
    pub query: &'static str,
    pub file: &'static str,
    pub page: Option<u32>,
    pub sheet: Option<&'static str>,
    pub row: Option<u32>,
    pub heading: Option<&'static str>,
}

const FIELD_NOTES: &str = r#"<html><body><h1>Field notes</h1>
<p>The orbital telescope recorded a supernova in the Andromeda galaxy during the winter survey. Spectra showed hydrogen lines fading over six weeks.</p>
<h1 style="page-break-before: always">Volcanoes</h1>
<p>Basaltic lava flows from the eruption covered the southern slopes of the volcano for three weeks, and ash fell on villages forty kilometres away.</p>
</body></html>"#;

const COOKBOOK: &str = r#"<html><body><h1>Kitchen handbook</h1><p>Recipes collected by the staff canteen.</p>
<h2>Bread</h2><p>Knead the sourdough for ten minutes, let the dough rise overnight, and bake at 230 degrees until the crust is dark.</p>
<h2>Soup</h2><p>Simmer the lentils with cumin, carrots and onions for forty minutes, then blend until smooth.</p>
<table><tr><td>Ingredient</td><td>Amount</td></tr><tr><td>Flour</td><td>500 g</td></tr></table>
</body></html>"#;

const INVENTORY_CSV: &str = "part,description,warehouse,quantity\nA-100,stainless steel hex bolt,Rotterdam,1200\nB-220,hydraulic pump seal kit,Hamburg,35\nC-310,copper heat exchanger tube,Antwerp,480\n";

pub fn expectations() -> Vec<Expect> {
    vec![
        Expect {
            query: "lava from the volcanic eruption",
            file: "field-notes.pdf",
            page: Some(2),
            sheet: None,
            row: None,
            heading: None,
        },
        Expect {
            query: "supernova observed by a telescope",
            file: "field-notes.pdf",
            page: Some(1),
            sheet: None,
            row: None,
            heading: None,
        },
        Expect {
            query: "how long to knead sourdough bread",
            file: "kitchen.docx",
            page: None,
            sheet: None,
            row: None,
            heading: Some("Bread"),
        },
        Expect {
            query: "hydraulic pump seal kit stock in Hamburg",
            file: "inventory.xlsx",
            page: None,
            sheet: Some("inventory"),
            row: Some(3),
            heading: None,
        },
        Expect {
            query: "shared MIME-info database specification for file type detection",
            file: "shared-mime-info-spec.pdf",
            page: None,
            sheet: None,
            row: None,
            heading: None,
        },
        Expect {
            query: "migratory birds flying south in autumn",
            file: "birds.md",
            page: None,
            sheet: None,
            row: None,
            heading: Some("Migration"),
        },
        Expect {
            query: "espresso machine pressure and grind size",
            file: "coffee.html",
            page: None,
            sheet: None,
            row: None,
            heading: None,
        },
        Expect {
            query: "train timetable departure from Utrecht",
            file: "trains.csv",
            page: None,
            sheet: None,
            row: Some(3),
            heading: None,
        },
        Expect {
            query: "red planet covered in iron oxide dust",
            file: "planets.ods",
            page: None,
            sheet: Some("planets"),
            row: Some(3),
            heading: None,
        },
        Expect {
            query: "copper concentrate exports from Chile",
            file: "harbours.xls",
            page: None,
            sheet: Some("harbours"),
            row: Some(3),
            heading: None,
        },
    ]
}

fn soffice(dir: &Path, target: &str, inputs: &[&str]) {
    let status = Command::new("soffice")
        .current_dir(dir)
        .args(["--headless", "--norestore", "--convert-to", target])
        .args(inputs)
        .env("HOME", dir) // a private LibreOffice profile, so parallel tests do not share one
        .status()
        .expect("LibreOffice (soffice) is installed by the test command");
    assert!(status.success(), "soffice --convert-to {target} failed");
}

/// Writes the corpus into `dir`; returns (file name, path) of every good document.
pub fn build(dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::write(dir.join("field-notes.html"), FIELD_NOTES).unwrap();
    std::fs::write(dir.join("kitchen.html"), COOKBOOK).unwrap();
    std::fs::write(dir.join("inventory.csv"), INVENTORY_CSV).unwrap();
    soffice(dir, "pdf:writer_pdf_Export", &["field-notes.html"]);
    soffice(dir, "docx:MS Word 2007 XML", &["kitchen.html"]);
    soffice(dir, "xlsx", &["inventory.csv"]);
    std::fs::write(dir.join("planets.csv"), "planet,moons,notes\nJupiter,95,largest planet with the great red spot\nMars,2,red planet covered in iron oxide dust\n").unwrap();
    std::fs::write(dir.join("harbours.csv"), "harbour,country,cargo\nHamburg,Germany,automobiles and machinery\nValparaiso,Chile,copper concentrate exports\n").unwrap();
    soffice(dir, "ods", &["planets.csv"]);
    soffice(dir, "xls:MS Excel 97", &["harbours.csv"]);
    std::fs::write(
        dir.join("secret.txt"),
        "Confidential minutes of the board meeting.",
    )
    .unwrap();
    soffice(
        dir,
        r#"pdf:writer_pdf_Export:{"EncryptFile":{"type":"boolean","value":"true"},"DocumentOpenPassword":{"type":"string","value":"secret"}}"#,
        &["secret.txt"],
    );
    std::fs::copy(
        "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf",
        dir.join("shared-mime-info-spec.pdf"),
    )
    .expect("the shared-mime-info package's PDF (installed by the test command)");
    std::fs::write(
        dir.join("birds.md"),
        "# Nature diary\n\nNotes from the marsh.\n\n## Migration\n\nFlocks of migratory birds fly south in autumn, following the coast.\n\n## Plants\n\nReeds grow tall along the water.\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("coffee.html"),
        "<!DOCTYPE html><html><head><title>x</title><script>var hidden='trains';</script></head><body><h1>Coffee</h1><p>An espresso machine needs nine bars of pressure and a fine grind size.</p></body></html>",
    )
    .unwrap();
    std::fs::write(dir.join("trains.csv"), "line,from,to,departure\nIC 500,Amsterdam,Rotterdam,08:15\nIC 3500,Utrecht,Eindhoven,09:40\n").unwrap();
    [
        "field-notes.pdf",
        "kitchen.docx",
        "inventory.xlsx",
        "shared-mime-info-spec.pdf",
        "birds.md",
        "coffee.html",
        "trains.csv",
        "planets.ods",
        "harbours.xls",
    ]
    .iter()
    .map(|n| (n.to_string(), dir.join(n)))
    .collect()
}

/// Hostile inputs with the error code each must produce.
pub fn hostile(dir: &Path) -> Vec<(String, Vec<u8>, &'static str)> {
    let mut random = vec![0u8; 64 * 1024];
    let mut x: u32 = 12345;
    for b in random.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    // A DOCX whose document.xml inflates to 64 MiB of zeros.
    let mut bomb = Vec::new();
    {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(&mut bomb));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("word/document.xml", opts).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap();
    }
    let real = std::fs::read(dir.join("field-notes.pdf")).unwrap();
    let truncated = real[..real.len() / 3].to_vec();
    vec![
        ("random.bin".into(), random, "unsupported_format"),
        ("empty.txt".into(), Vec::new(), "empty_document"),
        ("bomb.docx".into(), bomb, "limit_exceeded"),
        ("truncated.pdf".into(), truncated, "malformed_document"),
        ("blank.txt".into(), b"   \n\n \t ".to_vec(), "no_text"),
        (
            "secret.pdf".into(),
            std::fs::read(dir.join("secret.pdf")).unwrap(),
            "encrypted_document",
        ),
    ]
}
