//! Cross-crate integration tests live in `tests/`; the nested lab in
//! `lab/`; the fuzz targets' bodies in [`fuzz`].

pub mod fuzz;
