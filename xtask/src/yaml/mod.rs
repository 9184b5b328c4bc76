//! The YAML loader every data file goes through (suites, images, machine profiles, the host
//! package table): typed values, and errors that name the file, the line and the field.

mod layout;

pub use layout::Layout;

use crate::error::UsageError;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file a suite or image was read from, and where each of its keys stands.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub path: PathBuf,
    pub layout: Arc<Layout>,
}

impl Origin {
    /// An error about `field` (a path like `cases[2].images[0]`), at the line of its key.
    pub fn error(&self, field: impl Into<String>, message: impl Into<String>) -> UsageError {
        let field = field.into();
        UsageError {
            file: Some(self.path.clone()),
            line: self.layout.line(&field),
            field,
            message: message.into(),
        }
    }
}

/// Parses YAML text into `T` and reads where each key stands; errors name the file, the line
/// and the field.
pub fn parse_yaml<T: for<'de> Deserialize<'de>>(
    path: &Path,
    text: &str,
) -> Result<(T, Origin), UsageError> {
    let at = |e: &serde_saphyr::Error, layout: Option<&Layout>| {
        let loc = e.location();
        UsageError {
            file: Some(path.to_path_buf()),
            line: loc.map(|l| l.line()),
            field: loc
                .and_then(|l| layout?.path_at(l.line(), l.column()))
                .unwrap_or_default(),
            message: yaml_message(e),
        }
    };
    let layout = Layout::parse(text).map_err(|e| at(&e, None))?;
    let value =
        serde_saphyr::from_str_with_options(text, serde_saphyr::options! { with_snippet: false })
            .map_err(|e| at(&e, Some(&layout)))?;
    let origin = Origin {
        path: path.to_path_buf(),
        layout: Arc::new(layout),
    };
    Ok((value, origin))
}

/// The parser's message without the position it appends (the error names it already).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

pub fn read(path: &Path) -> Result<String, UsageError> {
    std::fs::read_to_string(path).map_err(|e| UsageError {
        file: Some(path.to_path_buf()),
        line: None,
        field: String::new(),
        message: format!("reading: {e}"),
    })
}
