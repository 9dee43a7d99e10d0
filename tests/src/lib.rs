//! Empty: this package is its integration tests (`tests/*.rs`), which need root and use the lab in
//! `xnet-lab`. It is not a default member of the workspace; `cargo xtask test` runs it.
