//! `schema-check SCHEMA.json FILE.yml...`: checks each YAML (or JSON) file against a JSON
//! schema, offline, and prints one line per error, with the path of the value in the file.
//! Exit 0: every file valid; 1: some file not; 2: a file or the schema did not load.

use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((schema, files)) = args.split_first().filter(|(_, files)| !files.is_empty()) else {
        eprintln!("usage: schema-check SCHEMA.json FILE.yml...");
        return ExitCode::from(2);
    };
    match check_all(Path::new(schema), files) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("schema-check: {e}");
            ExitCode::from(2)
        }
    }
}

/// True when every file is valid.
fn check_all(schema: &Path, files: &[String]) -> Result<bool, String> {
    let schema_json: Value = serde_json::from_str(&read(schema)?)
        .map_err(|e| format!("{}: not JSON: {e}", schema.display()))?;
    let validator = jsonschema::validator_for(&schema_json)
        .map_err(|e| format!("{}: not a usable schema: {e}", schema.display()))?;
    let mut all_valid = true;
    for file in files {
        // YAML 1.2, as the engines read it: `on:` stays a key, not `true`.
        let instance: Value = serde_saphyr::from_str(&read(Path::new(file))?)
            .map_err(|e| format!("{file}: not YAML: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| {
                format!(
                    "{file}: {}: {}",
                    e.instance_path(),
                    shortened(&e.to_string())
                )
            })
            .collect();
        if errors.is_empty() {
            println!("{file}: valid against {}", schema.display());
        } else {
            all_valid = false;
            for line in errors {
                println!("{line}");
            }
        }
    }
    Ok(all_valid)
}

/// An error's text cut to a line's worth: some quote the whole value that failed.
fn shortened(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{} ...", &text[..at]),
        None => text.to_string(),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}
