//! Fuzzes the `coord.toml` and `relay.toml` parsers and their checks: nothing may panic,
//! and every error names a line and column inside the text.
//!
//! From the repository root: `cargo +nightly fuzz run coord_config -- -max_total_time=30`.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use postern_coord::config::{ConfigError, CoordFile, RelayFile};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    let lines = text.lines().count().max(1) + 1;
    let check = |error: &ConfigError| {
        if let ConfigError::Parse { line, column, .. } = error {
            assert!(*line >= 1 && *line <= lines && *column >= 1, "{error}");
        }
        let _ = error.to_string();
    };
    match CoordFile::parse(path, &text) {
        Ok(file) => {
            if file.validate(path).is_ok() {
                // Secrets resolve through a fake environment; files named by the text are
                // not read (database_file, client_secret_file), only env references.
                let env = |_: &str| Some("secret".to_owned());
                if file.database_file.is_none() {
                    let _ = file.database_url(path, &env);
                }
                if let Some(oidc) = &file.oidc
                    && oidc.client_secret_file.is_none()
                {
                    let _ = oidc.client_secret(path, &env);
                }
            }
        }
        Err(error) => check(&error),
    }
    match RelayFile::parse(path, &text) {
        Ok(file) => {
            let _ = file.validate(path);
        }
        Err(error) => check(&error),
    }
});
