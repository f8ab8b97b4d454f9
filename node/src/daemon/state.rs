//! The node's state directory: its keys, what `postern login` learned, and the last netmap.
//!
//! Layout (every file written by the owner only; key files `0600`, the directory `0700`):
//!
//! | file | what |
//! |---|---|
//! | `machine.key` | the machine key (identifies this computer to the coord) |
//! | `node.key` | the node key (the WireGuard static key) |
//! | `disco.key` | the disco key (path discovery) |
//! | `login.json` | coord URL, pinned coord key, node id and hostname, written by login |
//! | `netmap.json` | the last netmap, so a node restarted while the coord is down still works |
//! | `postern.sock` | the running daemon's local API (see [`super::api`]) |
//!
//! A key file readable by group or others is refused with an error that names the file and
//! the `chmod` that fixes it: a leaked node key lets anyone impersonate the node.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use postern_proto::netmap::Netmap;
use postern_proto::{DiscoPrivateKey, MachinePrivateKey, MachinePublicKey, NodeId, NodePrivateKey};
use serde::{Deserialize, Serialize};

/// File name of the machine key.
pub const MACHINE_KEY_FILE: &str = "machine.key";
/// File name of the node key.
pub const NODE_KEY_FILE: &str = "node.key";
/// File name of the disco key.
pub const DISCO_KEY_FILE: &str = "disco.key";
/// File name of the login state.
pub const LOGIN_FILE: &str = "login.json";
/// File name of the cached netmap.
pub const NETMAP_FILE: &str = "netmap.json";
/// File name of the local API socket.
pub const API_SOCKET_FILE: &str = "postern.sock";

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file or the directory could not be read, written or created.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot create", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file is readable or writable by someone other than its owner.
    #[error(
        "key file {path} has mode {mode:04o}, which lets other users read it; it must be private to its owner: run `chmod 600 {path}`"
    )]
    KeyFileTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file does not hold a key of the expected kind.
    #[error(
        "key file {path} is not a valid key ({reason}); restore it from a backup, or remove it and log in again (the node then gets a new identity)"
    )]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A JSON state file is corrupt.
    #[error("state file {path} is corrupt ({reason}); remove it and run `postern login` again")]
    BadStateFile {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
}

/// The three key pairs of a node. `Debug` shows only public keys.
pub struct NodeKeys {
    /// Identifies this computer to the coord; authenticates the control channel.
    pub machine: MachinePrivateKey,
    /// The WireGuard static key.
    pub node: NodePrivateKey,
    /// The path-discovery key.
    pub disco: DiscoPrivateKey,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("machine", &self.machine.public_key())
            .field("node", &self.node.public_key())
            .field("disco", &self.disco.public_key())
            .finish()
    }
}

/// What `postern login` learned and `postern up` needs: where the coord is, its pinned key,
/// and who this node is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The coord URL as given (`http://coord.example.com:8443`).
    pub coord_url: String,
    /// The pinned coord key (trust on first use at login).
    pub coord_key: MachinePublicKey,
    /// This node's id at the coord.
    pub node_id: NodeId,
    /// The hostname the node registered with.
    pub hostname: String,
    /// The node's short name as the coord assigned it, for messages.
    #[serde(default)]
    pub name: String,
}

/// A node's state directory; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens `path`, creating it (mode `0700`) if it does not exist.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StateError> {
        let path = path.into();
        if !path.exists() {
            fs::create_dir_all(&path).map_err(|source| StateError::Io {
                action: "cannot create the state directory",
                path: path.clone(),
                source,
            })?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(|source| {
                StateError::Io {
                    action: "cannot restrict the state directory",
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the running daemon's local API listens.
    pub fn api_socket(&self) -> PathBuf {
        self.path.join(API_SOCKET_FILE)
    }

    /// Loads the three keys, creating (and saving, `0600`) any that do not exist yet.
    ///
    /// Fails if a key file is readable by others ([`StateError::KeyFileTooOpen`]) or
    /// corrupt; it never overwrites an existing key.
    pub fn load_or_create_keys(&self) -> Result<NodeKeys, StateError> {
        let rng = &mut rand::rngs::OsRng;
        let machine = self.key_file(
            MACHINE_KEY_FILE,
            || MachinePrivateKey::generate(rng).to_secret_text(),
            MachinePrivateKey::parse_secret_text,
        )?;
        let rng = &mut rand::rngs::OsRng;
        let node = self.key_file(
            NODE_KEY_FILE,
            || NodePrivateKey::generate(rng).to_secret_text(),
            NodePrivateKey::parse_secret_text,
        )?;
        let rng = &mut rand::rngs::OsRng;
        let disco = self.key_file(
            DISCO_KEY_FILE,
            || DiscoPrivateKey::generate(rng).to_secret_text(),
            DiscoPrivateKey::parse_secret_text,
        )?;
        Ok(NodeKeys {
            machine,
            node,
            disco,
        })
    }

    /// The login state, or `None` if the node never logged in (or logged out).
    pub fn login(&self) -> Result<Option<LoginState>, StateError> {
        self.read_json(LOGIN_FILE)
    }

    /// Saves the login state (`0600`).
    pub fn save_login(&self, login: &LoginState) -> Result<(), StateError> {
        self.write_json(LOGIN_FILE, login)
    }

    /// Forgets the login: removes the login state, the cached netmap and the node key, so
    /// the next login registers a new node. The machine key stays.
    pub fn logout(&self) -> Result<(), StateError> {
        for name in [LOGIN_FILE, NETMAP_FILE, NODE_KEY_FILE] {
            let path = self.path.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        action: "cannot remove",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The last netmap saved, if any (a corrupt cache is ignored: the coord sends a fresh one).
    pub fn cached_netmap(&self) -> Option<Netmap> {
        match self.read_json::<Netmap>(NETMAP_FILE) {
            Ok(netmap) => netmap,
            Err(err) => {
                tracing::warn!(%err, "ignoring the cached netmap");
                None
            }
        }
    }

    /// Saves `netmap` as the cache.
    pub fn save_netmap(&self, netmap: &Netmap) -> Result<(), StateError> {
        self.write_json(NETMAP_FILE, netmap)
    }

    fn key_file<K, E: std::fmt::Display>(
        &self,
        name: &str,
        generate: impl FnOnce() -> zeroize::Zeroizing<String>,
        parse: impl Fn(&str) -> Result<K, E>,
    ) -> Result<K, StateError> {
        let path = self.path.join(name);
        if !path.exists() {
            let text = generate();
            write_private(&path, text.as_bytes())?;
        }
        let metadata = fs::metadata(&path).map_err(|source| StateError::Io {
            action: "cannot read",
            path: path.clone(),
            source,
        })?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StateError::KeyFileTooOpen { path, mode });
        }
        let text = zeroize::Zeroizing::new(fs::read_to_string(&path).map_err(|source| {
            StateError::Io {
                action: "cannot read",
                path: path.clone(),
                source,
            }
        })?);
        parse(text.trim()).map_err(|err| StateError::BadKeyFile {
            path,
            reason: err.to_string(),
        })
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StateError> {
        let path = self.path.join(name);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    action: "cannot read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|err| StateError::BadStateFile {
                path,
                reason: err.to_string(),
            })
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.path.join(name);
        let text = serde_json::to_vec_pretty(value).map_err(|err| StateError::BadStateFile {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        // Write a temporary file and rename it: a crash never leaves half a file.
        let tmp = self.path.join(format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        write_private(&tmp, &text)?;
        fs::rename(&tmp, &path).map_err(|source| StateError::Io {
            action: "cannot replace",
            path,
            source,
        })
    }
}

/// Creates `path` with mode `0600` (never following an existing file) and writes `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        action: "cannot write",
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_private_and_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("s")).unwrap();
        let first = state.load_or_create_keys().unwrap();
        for name in [MACHINE_KEY_FILE, NODE_KEY_FILE, DISCO_KEY_FILE] {
            let mode = fs::metadata(state.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let dir_mode = fs::metadata(state.path()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let second = state.load_or_create_keys().unwrap();
        assert_eq!(first.node.public_key(), second.node.public_key());
        assert_eq!(first.machine.public_key(), second.machine.public_key());
        assert_eq!(first.disco.public_key(), second.disco.public_key());
        assert!(!format!("{first:?}").contains("priv"));
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.load_or_create_keys().unwrap();
        let path = state.path().join(NODE_KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = state.load_or_create_keys().unwrap_err();
        assert!(matches!(
            err,
            StateError::KeyFileTooOpen { mode: 0o644, .. }
        ));
        let message = err.to_string();
        assert!(message.contains("node.key"), "{message}");
        assert!(message.contains("0644"), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn a_corrupt_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        write_private(&state.path().join(DISCO_KEY_FILE), b"nodekey:zz").unwrap();
        let err = state.load_or_create_keys().unwrap_err();
        assert!(matches!(err, StateError::BadKeyFile { .. }), "{err}");
        assert!(err.to_string().contains("disco.key"), "{err}");
        assert_eq!(
            fs::read_to_string(state.path().join(DISCO_KEY_FILE)).unwrap(),
            "nodekey:zz"
        );
    }

    #[test]
    fn login_state_round_trips_and_logout_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.login().unwrap(), None);
        let keys = state.load_or_create_keys().unwrap();
        let login = LoginState {
            coord_url: "http://127.0.0.1:1".into(),
            coord_key: keys.machine.public_key(),
            node_id: NodeId(7),
            hostname: "box".into(),
            name: "box".into(),
        };
        state.save_login(&login).unwrap();
        assert_eq!(state.login().unwrap(), Some(login));
        state.logout().unwrap();
        assert_eq!(state.login().unwrap(), None);
        assert!(!state.path().join(NODE_KEY_FILE).exists());
        assert!(state.path().join(MACHINE_KEY_FILE).exists());
        fs::write(state.path().join(LOGIN_FILE), "{").unwrap();
        let err = state.login().unwrap_err();
        assert!(err.to_string().contains("postern login"), "{err}");
    }
}
