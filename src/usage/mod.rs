//! Usage and quotas: race-free reservation and settlement (`quota`), the usage ledger and
//! its report, and the quota API (`graphql`).

pub mod graphql;
pub mod quota;
pub mod report;
pub mod subscription;
