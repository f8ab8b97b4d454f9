//! The local certificate authority of `postern dev`.
//!
//! `postern dev` has no public DNS name, so no ACME CA can issue for it. It makes its own
//! CA instead (kept in the dev state directory, so a browser or `curl --cacert` trusts it
//! once) and a wildcard certificate for the dev funnel domain, which the embedded ingress
//! serves as its static certificate. The CA key never leaves the state directory (0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The CA file names in the dev state directory.
const CA_CERT: &str = "dev-ca.pem";
const CA_KEY: &str = "dev-ca.key";
const LEAF_CERT: &str = "dev-edge.pem";
const LEAF_KEY: &str = "dev-edge.key";

/// The dev CA and the edge certificate it signed, as files.
#[derive(Debug, Clone)]
pub(crate) struct DevCa {
    /// The CA certificate (PEM), to give to `curl --cacert` or a browser.
    pub(crate) ca_cert: PathBuf,
    /// The edge's certificate chain (PEM): a wildcard for the funnel domain.
    pub(crate) edge_cert: PathBuf,
    /// The edge's private key (PEM, 0600).
    pub(crate) edge_key: PathBuf,
}

/// Loads the CA from `dir`, or creates it; then (re)issues the edge certificate for
/// `*.{domain}` and `{domain}` so a changed domain is covered.
pub(crate) fn load_or_create(dir: &Path, domain: &str) -> Result<DevCa, String> {
    let ca_cert = dir.join(CA_CERT);
    let ca_key = dir.join(CA_KEY);
    let (ca_key_pair, ca_pem) = if ca_cert.exists() && ca_key.exists() {
        let key_pem = read(&ca_key)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            format!(
                "{}: not a private key ({e}); delete it to start over",
                ca_key.display()
            )
        })?;
        (key, read(&ca_cert)?)
    } else {
        let key = KeyPair::generate().map_err(|e| format!("generating the dev CA key: {e}"))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| format!("making the dev CA: {e}"))?;
        write_private(&ca_key, &key.serialize_pem())?;
        write_public(&ca_cert, &cert.pem())?;
        (key, cert.pem())
    };
    // The signing copy of the CA: the same name and key as the stored one, so what it
    // signs chains to the stored certificate.
    let issuer = ca_params()
        .self_signed(&ca_key_pair)
        .map_err(|e| format!("loading the dev CA: {e}"))?;
    let edge_key_pair = KeyPair::generate().map_err(|e| format!("generating the edge key: {e}"))?;
    let mut leaf = CertificateParams::new(vec![format!("*.{domain}"), domain.to_owned()])
        .map_err(|e| format!("the dev domain {domain:?} is not a DNS name: {e}"))?;
    leaf.distinguished_name = name("Postern dev edge");
    let leaf = leaf
        .signed_by(&edge_key_pair, &issuer, &ca_key_pair)
        .map_err(|e| format!("signing the edge certificate: {e}"))?;
    let edge_cert = dir.join(LEAF_CERT);
    let edge_key = dir.join(LEAF_KEY);
    write_public(&edge_cert, &format!("{}{}", leaf.pem(), ca_pem))?;
    write_private(&edge_key, &edge_key_pair.serialize_pem())?;
    Ok(DevCa {
        ca_cert,
        edge_cert,
        edge_key,
    })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Postern dev CA (this machine only)");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    write_with_mode(path, text, 0o600)
}

fn write_public(path: &Path, text: &str) -> Result<(), String> {
    write_with_mode(path, text, 0o644)
}

fn write_with_mode(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_ca_is_made_once_and_the_edge_certificate_chains_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "funnel.localhost").unwrap();
        let ca_pem = fs::read_to_string(&first.ca_cert).unwrap();
        let again = load_or_create(dir.path(), "funnel.localhost").unwrap();
        assert_eq!(
            fs::read_to_string(&again.ca_cert).unwrap(),
            ca_pem,
            "the CA is kept"
        );
        let chain = fs::read_to_string(&again.edge_cert).unwrap();
        assert!(chain.ends_with(&ca_pem), "the chain ends with the CA");
        let mode = fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&again.edge_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_ca_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), "funnel.localhost").unwrap();
        fs::write(dir.path().join(CA_KEY), "not a key").unwrap();
        let error = load_or_create(dir.path(), "funnel.localhost").unwrap_err();
        assert!(error.contains("delete it to start over"), "{error}");
    }
}
