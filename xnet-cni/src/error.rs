//! Errors as the CNI spec wants them: a JSON object `{"cniVersion", "code", "msg", "details"}` on
//! stdout and a nonzero exit status. Codes 1-99 are the spec's; 100 and up are this plugin's.

use serde_json::json;

/// The plugin was asked for a CNI version (or a command) it does not implement.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// The network config has a field this plugin will not accept (e.g. `ipam.ranges`).
pub const UNSUPPORTED_FIELD: u32 = 2;
/// The container (its saved state) is unknown.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// A `CNI_*` environment variable is missing or invalid.
pub const INVALID_ENV: u32 = 4;
/// Reading or writing a file failed.
pub const IO_FAILURE: u32 = 5;
/// Stdin (or a saved file) is not the JSON it should be.
pub const DECODE_FAILURE: u32 = 6;
/// The network config or the subnet file is invalid.
pub const INVALID_CONFIG: u32 = 7;
/// A transient condition: here, the agent has not written the subnet file yet.
pub const TRY_AGAIN_LATER: u32 = 11;
/// The delegate plugin could not be found or run, or failed without a CNI error of its own.
pub const DELEGATE_FAILED: u32 = 100;

/// A CNI error: what the runtime shows to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object printed on stdout, in the cniVersion of the request.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(TRY_AGAIN_LATER, "subnet file /run/xnet/subnet.env does not exist yet")
            .with_details("is the xnet agent running?");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({
                "cniVersion": "1.0.0",
                "code": 11,
                "msg": "subnet file /run/xnet/subnet.env does not exist yet",
                "details": "is the xnet agent running?",
            })
        );
        assert_eq!(e.to_string(), "subnet file /run/xnet/subnet.env does not exist yet");
    }
}
