//! The `list` verb: the cells a selection would run, with the parameters the guest will use
//! (defaults filled in) and the deadlines, through the same loading and expansion as `run`.
//! Nothing is built, downloaded or booted.

use crate::config::Catalog;
use crate::host;
use crate::matrix::{self, Cell, Selection};
use anyhow::Result;
use std::fmt::Write;
use std::time::Duration;

/// The listing of `suite` (a name in `suites/` or a path) under `sel`.
pub fn list(suite: &str, sel: &Selection) -> Result<String> {
    let catalog = Catalog::load(&host::workspace_root())?;
    let suite = catalog.resolve_suite(suite)?;
    let cells = matrix::expand(&suite, &catalog, sel)?;
    let profile = format!("{:?}", sel.profile).to_lowercase();
    let mut out = format!(
        "suite {}: {} cells, profile {profile}\n",
        suite.name,
        cells.len()
    );
    for cell in &cells {
        describe(&mut out, cell);
    }
    Ok(out)
}

fn describe(out: &mut String, cell: &Cell) {
    let d = &cell.deadlines;
    // Expansion checked the parameters already; resolving again only fills in the defaults.
    let params = matrix::resolve_params(&cell.image, cell.case.scenario.as_str(), &cell.params)
        .map(|p| p.to_string())
        .unwrap_or_else(|e| format!("invalid: {e}"));
    let _ = writeln!(
        out,
        "{}\n    scenario {}, expect {}, transport {}\n    deadlines: boot {}, heartbeat {}, cell {}\n    params: {params}",
        cell.id,
        cell.case.scenario,
        format!("{:?}", cell.case.expect).to_lowercase(),
        cell.transport.kind(),
        secs(d.boot()),
        secs(d.heartbeat()),
        secs(d.cell()),
    );
}

fn secs(d: Duration) -> String {
    match d.subsec_millis() {
        0 => format!("{}s", d.as_secs()),
        _ => format!("{}ms", d.as_millis()),
    }
}
