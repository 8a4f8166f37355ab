//! Cross-crate integration tests live in `tests/`; the nested lab in `lab/`.
