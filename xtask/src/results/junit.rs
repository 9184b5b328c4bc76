//! `junit.xml`: one test case per cell, for CI engines that show JUnit.

use super::info::RunInfo;
use super::summary::expected_text;
use crate::cell::CellRecord;
use anyhow::Result;

pub fn render(run: &RunInfo, records: &[CellRecord]) -> Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new(format!("kstorm {}", run.suite));
    let mut suite = TestSuite::new(run.suite.clone());
    for r in records {
        let status = if r.as_expected {
            TestCaseStatus::success()
        } else if r.verdict.is_infra() {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(r.verdict.describe());
            s
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(format!(
                "expected {}, got {}",
                expected_text(r),
                r.verdict.describe()
            ));
            s
        };
        let mut case = TestCase::new(r.id.clone(), status);
        case.set_classname(format!("{}.{}", run.suite, r.image));
        case.set_time(std::time::Duration::from_secs_f64(r.timings.total_s));
        suite.add_test_case(case);
    }
    report.add_test_suite(suite);
    Ok(report.to_string()?)
}
