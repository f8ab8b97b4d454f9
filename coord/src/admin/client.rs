//! The admin API's client, used by `postern-coord nodes ...` and `postern-coord audit`, and
//! the text those commands print.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{ADMIN_ADDR_FILE, ADMIN_TOKEN_FILE, AdminToken, AuditEntry, FunnelAdminInfo, NodeInfo};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminClientError {
    /// The admin address file is missing: the coord is not running with this state dir.
    #[error(
        "cannot read the admin API address from {path}: {source}; is `postern-coord serve` running with this --state-dir? (or give --admin-url)"
    )]
    NoAddress {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The admin token cannot be read.
    #[error(
        "cannot read the admin token from {path}: {source}; run as the user that runs the coord (or give --admin-token-file)"
    )]
    NoToken {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The URL is malformed.
    #[error("invalid admin API URL {0:?}; give it as http://HOST:PORT")]
    BadUrl(String),
    /// The coord could not be reached.
    #[error("cannot reach the coord's admin API at {url}: {source}; is the coord running?")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The coord refused or failed the request.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The coord's explanation.
        message: String,
    },
}

impl AdminClientError {
    /// Whether the coord answered that the node (or thing) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AdminClientError::Api { status: 404, .. })
    }
}

/// A client of one coord's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: Url,
    token: AdminToken,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for the coord whose state directory is `state_dir`: the address from
    /// `admin.addr` unless `url` is given, the token from `admin.token` unless `token_file`.
    pub fn new(
        state_dir: &Path,
        url: Option<&str>,
        token_file: Option<&Path>,
    ) -> Result<Self, AdminClientError> {
        let base = match url {
            Some(url) => url.to_owned(),
            None => {
                let path = state_dir.join(ADMIN_ADDR_FILE);
                let addr = std::fs::read_to_string(&path)
                    .map_err(|source| AdminClientError::NoAddress { path, source })?;
                format!("http://{}/", addr.trim())
            }
        };
        let base = Url::parse(&base).map_err(|_| AdminClientError::BadUrl(base.clone()))?;
        let token_path = token_file
            .map(Path::to_owned)
            .unwrap_or_else(|| state_dir.join(ADMIN_TOKEN_FILE));
        let token = AdminToken::read(&token_path).map_err(|source| AdminClientError::NoToken {
            path: token_path,
            source,
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| AdminClientError::Connect {
                url: base.to_string(),
                source,
            })?;
        Ok(Self { base, token, http })
    }

    /// Every node.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, AdminClientError> {
        self.call(Method::GET, &["v1", "nodes"], None).await
    }

    /// One node, by id or name.
    pub async fn node(&self, node: &str) -> Result<NodeInfo, AdminClientError> {
        self.call(Method::GET, &["v1", "nodes", node], None).await
    }

    /// Renames a node.
    pub async fn rename(&self, node: &str, name: &str) -> Result<NodeInfo, AdminClientError> {
        let body = json!({ "name": name });
        self.call(Method::POST, &["v1", "nodes", node, "rename"], Some(body))
            .await
    }

    /// Replaces a node's tags.
    pub async fn tag(&self, node: &str, tags: &[String]) -> Result<NodeInfo, AdminClientError> {
        let body = json!({ "tags": tags });
        self.call(Method::POST, &["v1", "nodes", node, "tags"], Some(body))
            .await
    }

    /// Expires a node's key now.
    pub async fn expire(&self, node: &str) -> Result<NodeInfo, AdminClientError> {
        self.call(Method::POST, &["v1", "nodes", node, "expire"], None)
            .await
    }

    /// Approves a node.
    pub async fn approve(&self, node: &str) -> Result<NodeInfo, AdminClientError> {
        self.call(Method::POST, &["v1", "nodes", node, "approve"], None)
            .await
    }

    /// Deletes a node; returns what it was.
    pub async fn delete(&self, node: &str) -> Result<NodeInfo, AdminClientError> {
        self.call(Method::DELETE, &["v1", "nodes", node], None)
            .await
    }

    /// Marks a node as an ingress (`true`) or a plain node.
    pub async fn set_ingress(
        &self,
        node: &str,
        ingress: bool,
    ) -> Result<NodeInfo, AdminClientError> {
        let body = json!({ "ingress": ingress });
        self.call(Method::POST, &["v1", "nodes", node, "ingress"], Some(body))
            .await
    }

    /// Every funnel, open and closed (no secrets).
    pub async fn funnels(&self) -> Result<Vec<FunnelAdminInfo>, AdminClientError> {
        self.call(Method::GET, &["v1", "funnels"], None).await
    }

    /// Closes the funnel of `hostname`; `release` also frees its hostname.
    pub async fn close_funnel(
        &self,
        hostname: &str,
        release: bool,
    ) -> Result<FunnelAdminInfo, AdminClientError> {
        let body = json!({ "release": release });
        self.call(
            Method::POST,
            &["v1", "funnels", hostname, "close"],
            Some(body),
        )
        .await
    }

    /// The edge's recent decisions for the funnel of `hostname`, newest first (at most
    /// `limit`; only denials with `denied`).
    pub async fn funnel_log(
        &self,
        hostname: &str,
        limit: u32,
        denied: bool,
    ) -> Result<Vec<postern_proto::funnel::EdgeDecision>, AdminClientError> {
        let mut url = self.url(&["v1", "funnels", hostname, "log"]);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string())
            .append_pair("denied", if denied { "true" } else { "false" });
        self.send(Method::GET, url, None).await
    }

    /// Audit records at or after `since_ms`.
    pub async fn audit(&self, since_ms: i64) -> Result<Vec<AuditEntry>, AdminClientError> {
        let mut url = self.url(&["v1", "audit"]);
        url.query_pairs_mut()
            .append_pair("since_ms", &since_ms.to_string());
        self.send(Method::GET, url, None).await
    }

    /// Re-reads the policy file now.
    pub async fn reload_policy(&self) -> Result<Value, AdminClientError> {
        self.call(Method::POST, &["v1", "policy", "reload"], None)
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<Value>,
    ) -> Result<T, AdminClientError> {
        self.send(method, self.url(segments), body).await
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
    ) -> Result<T, AdminClientError> {
        let connect_error = |source| AdminClientError::Connect {
            url: self.base.to_string(),
            source,
        };
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(connect_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(connect_error)?;
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| format!("the coord answered {status}"));
            return Err(AdminClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|err| AdminClientError::Api {
            status: status.as_u16(),
            message: format!("unreadable answer from the coord: {err}"),
        })
    }
}

/// `nodes list` as a table: id, name, IPv4, user, tags, status, last seen, role
/// (`ingress` or `-`).
pub fn format_node_table(nodes: &[NodeInfo]) -> String {
    let rows: Vec<[String; 8]> = nodes
        .iter()
        .map(|n| {
            [
                n.id.to_string(),
                n.name.clone(),
                n.ipv4.clone(),
                n.user.clone(),
                if n.tags.is_empty() {
                    "-".to_owned()
                } else {
                    n.tags.join(",")
                },
                n.status().to_owned(),
                n.last_seen.map_or_else(|| "-".to_owned(), format_secs),
                if n.is_ingress { "ingress" } else { "-" }.to_owned(),
            ]
        })
        .collect();
    let header = [
        "ID",
        "NAME",
        "IPV4",
        "USER",
        "TAGS",
        "STATUS",
        "LAST SEEN",
        "ROLE",
    ];
    format_table(&header, &rows)
}

/// `funnels list` as a table: hostname, state, node, port, protocol, gates, expiry, URL.
pub fn format_funnel_table(funnels: &[FunnelAdminInfo]) -> String {
    let rows: Vec<[String; 8]> = funnels
        .iter()
        .map(|f| {
            [
                f.hostname.clone(),
                if f.open { "open" } else { "closed" }.to_owned(),
                format!("{} ({})", f.node, f.owner),
                f.port.to_string(),
                serde_json::to_value(f.protocol)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                if f.gates.is_empty() {
                    "-".to_owned()
                } else {
                    f.gates.join(",")
                },
                f.expires_at.map_or_else(|| "-".to_owned(), format_secs),
                f.url.clone(),
            ]
        })
        .collect();
    let header = [
        "HOSTNAME", "STATE", "NODE", "PORT", "PROTOCOL", "GATES", "EXPIRES", "URL",
    ];
    format_table(&header, &rows)
}

/// `funnels log` as a table, oldest first: time, client, request, gate, result and reason,
/// status, milliseconds.
pub fn format_edge_log(decisions: &[postern_proto::funnel::EdgeDecision]) -> String {
    let rows: Vec<[String; 7]> = decisions
        .iter()
        .rev()
        .map(|d| {
            let millis = u64::try_from(d.at_ms).unwrap_or(0);
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
            [
                humantime::format_rfc3339_millis(at).to_string(),
                d.client.clone(),
                format!("{} {}", d.method, d.path),
                d.gate.clone().unwrap_or_else(|| "-".to_owned()),
                match &d.reason {
                    Some(reason) => format!("{}: {reason}", d.result),
                    None => d.result.clone(),
                },
                d.status.to_string(),
                d.duration_ms.to_string(),
            ]
        })
        .collect();
    let header = [
        "TIME", "CLIENT", "REQUEST", "GATE", "RESULT", "STATUS", "MS",
    ];
    format_table(&header, &rows)
}

fn format_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `nodes show` as `key: value` lines.
pub fn format_node(n: &NodeInfo) -> String {
    let optional = |t: Option<i64>| t.map_or_else(|| "never".to_owned(), format_secs);
    format!(
        "id:          {}\nname:        {}\nfqdn:        {}\naddresses:   {} {}\nuser:        {}\ntags:        {}\nstatus:      {}\nkey expiry:  {}\nephemeral:   {}\ningress:     {}\ncreated:     {}\nlast seen:   {}\nnode key:    {}\nendpoints:   {}\n",
        n.id,
        n.name,
        n.fqdn,
        n.ipv4,
        n.ipv6,
        n.user,
        if n.tags.is_empty() {
            "-".to_owned()
        } else {
            n.tags.join(",")
        },
        n.status(),
        optional(n.key_expiry),
        n.ephemeral,
        n.is_ingress,
        format_secs(n.created_at),
        n.last_seen.map_or_else(|| "-".to_owned(), format_secs),
        n.node_key,
        if n.endpoints.is_empty() {
            "-".to_owned()
        } else {
            n.endpoints.join(" ")
        },
    )
}

/// `audit` as one line per record: time, actor, action, target, details, and `from ADDR`
/// when the record has a source address.
pub fn format_audit(entries: &[AuditEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let at = u64::try_from(e.at_ms)
            .ok()
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            .map_or_else(
                || e.at_ms.to_string(),
                |t| humantime::format_rfc3339_millis(t).to_string(),
            );
        let _ = write!(
            out,
            "{at}  {}  {}  {}  {}",
            e.actor, e.action, e.target, e.details
        );
        match &e.source_addr {
            Some(addr) => {
                let _ = writeln!(out, "  from {addr}");
            }
            None => out.push('\n'),
        }
    }
    out
}

fn format_secs(secs: i64) -> String {
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .map_or_else(
            || secs.to_string(),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        )
}
