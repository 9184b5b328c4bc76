//! Detector throughput benchmark (issue 5 fills this in).

pub fn throughput() -> anyhow::Result<()> {
    anyhow::bail!("detector throughput benchmark not written yet (issue 5)")
}
