//! Test-support code shared by the integration tests (each test crate that needs it says
//! `mod common;`). Not every test uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod item_cli;
pub mod lt;
