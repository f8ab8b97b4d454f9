//! The relay as the coord runs it: who may attach (the registry), and the relay map nodes
//! receive in their netmaps.
//!
//! The relay itself is `postern-relay`; the coord embeds it on its own listener (`postern-coord
//! serve --relay`) or runs it alone (`postern-coord relay`). Either way the relay map comes from
//! the coord's configuration: one region pointing at the embedded relay by default, or a
//! TOML file listing every region (`--relay-map`).

use std::path::Path;

use postern_proto::netmap::{RegionId, RelayMap, RelayRegion, RelayServer};
use postern_proto::{NodePublicKey, UnixTime};
use postern_relay::authorizer::{AuthorizeError, AuthorizeFuture, NodeAuthorizer};

use crate::store::Store;

/// Admits node keys of registered, approved nodes whose key has not expired.
#[derive(Debug, Clone)]
pub struct RegistryAuthorizer {
    store: Store,
}

impl RegistryAuthorizer {
    /// Answers from `store` (the coord's registry store).
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl NodeAuthorizer for RegistryAuthorizer {
    fn authorize<'a>(&'a self, node_key: &'a NodePublicKey) -> AuthorizeFuture<'a> {
        Box::pin(async move {
            let node = self
                .store
                .node_by_node_key(node_key)
                .await
                .map_err(|err| AuthorizeError(err.to_string()))?;
            let now = UnixTime::from_system_time(std::time::SystemTime::now());
            Ok(node.is_some_and(|node| {
                node.approved && node.key_expiry.is_none_or(|expiry| expiry > now)
            }))
        })
    }
}

/// The relay map for one relay at `url` (with STUN on `stun_port`), as region 1.
pub fn single_relay_map(url: String, stun_port: Option<u16>) -> RelayMap {
    RelayMap {
        regions: vec![RelayRegion {
            id: RegionId(1),
            name: "default".into(),
            servers: vec![RelayServer { url, stun_port }],
        }],
    }
}

/// Why a relay map file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayMapError {
    /// The file could not be read.
    #[error("cannot read the relay map {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a valid relay map.
    #[error("relay map {path} is not valid TOML for a relay map: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the TOML parser said (with line and column).
        message: String,
    },
    /// The map is inconsistent.
    #[error("relay map {path}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// Reads a relay map from TOML:
///
/// ```toml
/// [[regions]]
/// id = 1
/// name = "eu-west"
/// [[regions.servers]]
/// url = "https://relay-eu.example.com/relay"
/// stun_port = 3478
/// ```
///
/// Region ids must be unique and every region needs a server with an `http(s)://` URL.
pub fn load_relay_map(path: &Path) -> Result<RelayMap, RelayMapError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RelayMapError::Read {
        path: name.clone(),
        source,
    })?;
    parse_relay_map(&name, &text)
}

fn parse_relay_map(name: &str, text: &str) -> Result<RelayMap, RelayMapError> {
    let mut map: RelayMap = toml::from_str(text).map_err(|err| RelayMapError::Parse {
        path: name.to_owned(),
        message: err.to_string(),
    })?;
    let invalid = |problem: String| RelayMapError::Invalid {
        path: name.to_owned(),
        problem,
    };
    map.regions.sort_by_key(|region| region.id);
    for pair in map.regions.windows(2) {
        if let [a, b] = pair
            && a.id == b.id
        {
            return Err(invalid(format!("region id {} appears twice", a.id.0)));
        }
    }
    for region in &map.regions {
        if region.servers.is_empty() {
            return Err(invalid(format!("region {} has no servers", region.id.0)));
        }
        for server in &region.servers {
            if !(server.url.starts_with("https://") || server.url.starts_with("http://")) {
                return Err(invalid(format!(
                    "region {} server URL {:?} must start with https:// (or http:// for tests)",
                    region.id.0, server.url
                )));
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_maps_parse_and_bad_ones_are_explained() {
        let map = parse_relay_map(
            "map.toml",
            "[[regions]]\nid = 2\nname = \"us\"\n[[regions.servers]]\nurl = \"https://us/relay\"\n\
             [[regions]]\nid = 1\nname = \"eu\"\n[[regions.servers]]\nurl = \"https://eu/relay\"\nstun_port = 3478\n",
        )
        .unwrap();
        assert_eq!(map.regions[0].id, RegionId(1));
        assert_eq!(map.regions[0].servers[0].stun_port, Some(3478));
        let err = parse_relay_map(
            "map.toml",
            "[[regions]]\nid = 1\nname = \"eu\"\n[[regions.servers]]\nurl = \"ftp://eu\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "relay map map.toml: region 1 server URL \"ftp://eu\" must start with https:// (or http:// for tests)"
        );
        let err = parse_relay_map("map.toml", "[[regions]]\nid = 1\nname = \"eu\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "relay map map.toml: region 1 has no servers"
        );
        let err = parse_relay_map("map.toml", "regions = 3").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("relay map map.toml is not valid TOML for a relay map:"),
            "{err}"
        );
    }
}
