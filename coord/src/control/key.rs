//! The coord's static Noise key, persisted in the state directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use postern_proto::MachinePrivateKey;
use postern_proto::keys::KeyParseError;

/// File name of the coord's static key inside the state directory.
pub const COORD_KEY_FILE: &str = "coord.key";

/// Why the coord key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordKeyError {
    /// Reading or writing the key file failed.
    #[error("coord key file {path}: {source}; check the state directory exists and is writable")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error(
        "coord key file {path} is not a key ({source}); restore it from a backup, or delete it to make a new one (every node must then re-pin)"
    )]
    Parse {
        /// The key file.
        path: PathBuf,
        /// The error.
        source: KeyParseError,
    },
}

/// Loads the coord's static key from `state_dir`, creating it (mode 0600) on first start.
/// Nodes pin its public half, so losing it means every node must re-pin.
pub fn load_or_create_coord_key(state_dir: &Path) -> Result<MachinePrivateKey, CoordKeyError> {
    let path = state_dir.join(COORD_KEY_FILE);
    let io = |source| CoordKeyError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            MachinePrivateKey::parse_secret_text(&text).map_err(|source| CoordKeyError::Parse {
                path: path.clone(),
                source,
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = MachinePrivateKey::generate(&mut rand::rngs::OsRng);
            let mut file = create_private(&path).map_err(io)?;
            file.write_all(key.to_secret_text().as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            tracing::info!(path = %path.display(), public = %key.public_key(), "created the coord key");
            Ok(key)
        }
        Err(err) => Err(io(err)),
    }
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_coord_key(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(COORD_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_coord_key(dir.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        std::fs::write(dir.path().join(COORD_KEY_FILE), "garbage").unwrap();
        let err = load_or_create_coord_key(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is not a key"), "{err}");
    }
}
