//! The provider table: for each provider, which verifier family it uses and with which
//! headers, encodings, timestamp window, replay id and handshake.

use std::fmt;
use std::str::FromStr;

/// A webhook provider whose deliveries the edge can verify (`--verify-webhook NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provider {
    /// GitHub: HMAC-SHA256 of the body, `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    /// Stripe: HMAC-SHA256 of `t.body`, `Stripe-Signature: t=..,v1=..`.
    Stripe,
    /// Slack: HMAC-SHA256 of `v0:ts:body`, `X-Slack-Signature: v0=<hex>`; answers
    /// `url_verification`.
    Slack,
    /// Standard Webhooks: HMAC-SHA256 `v1` (`whsec_` secret) or Ed25519 `v1a` (`whpk_`
    /// public key) over `id.ts.body`, `webhook-*` headers.
    StandardWebhooks,
    /// Svix: Standard Webhooks with `svix-*` headers (either prefix is accepted).
    Svix,
    /// Shopify: HMAC-SHA256 of the body, `X-Shopify-Hmac-Sha256: <base64>`.
    Shopify,
    /// Twilio: HMAC-SHA1 of the URL and sorted form params (or of the URL alone with a
    /// `bodySHA256` query parameter for JSON), `X-Twilio-Signature: <base64>`.
    Twilio,
    /// GitLab with a secret token: `X-Gitlab-Token` compared in constant time.
    Gitlab,
    /// GitLab with a signing token: Standard Webhooks headers and scheme.
    GitlabSigned,
    /// Linear: HMAC-SHA256 of the body, `Linear-Signature: <hex>`, `webhookTimestamp`
    /// (ms) in the body.
    Linear,
    /// PagerDuty: HMAC-SHA256 of the body, `X-PagerDuty-Signature: v1=<hex>,v1=<hex>`.
    Pagerduty,
    /// Zoom: HMAC-SHA256 of `v0:ts:body`, `x-zm-signature: v0=<hex>`; answers
    /// `endpoint.url_validation`.
    Zoom,
    /// Discord interactions: Ed25519 over `ts + body`; answers PING.
    Discord,
    /// Paddle Billing: HMAC-SHA256 of `ts:body`, `Paddle-Signature: ts=..;h1=..`.
    Paddle,
    /// Bitbucket: HMAC-SHA256 of the body, `X-Hub-Signature: sha256=<hex>`.
    Bitbucket,
    /// Gitea: HMAC-SHA256 of the body, `X-Gitea-Signature: <hex>`.
    Gitea,
    /// Intercom: HMAC-SHA1 of the body, `X-Hub-Signature: sha1=<hex>`.
    Intercom,
    /// Square: HMAC-SHA256 of `url + body`, `x-square-hmacsha256-signature: <base64>`.
    Square,
    /// Twitch EventSub: HMAC-SHA256 of `id + ts + body`; answers
    /// `webhook_callback_verification`.
    Twitch,
    /// Mailgun: HMAC-SHA256 of `timestamp + token`, all three fields inside the body.
    Mailgun,
    /// SendGrid event webhook: ECDSA P-256 / SHA-256 over `ts + body`.
    Sendgrid,
    /// Okta event hooks: a static `Authorization` header; answers the verification GET.
    Okta,
}

impl Provider {
    /// Every provider, in documentation order.
    pub const ALL: [Provider; 22] = [
        Provider::Github,
        Provider::Stripe,
        Provider::Slack,
        Provider::StandardWebhooks,
        Provider::Svix,
        Provider::Shopify,
        Provider::Twilio,
        Provider::Gitlab,
        Provider::GitlabSigned,
        Provider::Linear,
        Provider::Pagerduty,
        Provider::Zoom,
        Provider::Discord,
        Provider::Paddle,
        Provider::Bitbucket,
        Provider::Gitea,
        Provider::Intercom,
        Provider::Square,
        Provider::Twitch,
        Provider::Mailgun,
        Provider::Sendgrid,
        Provider::Okta,
    ];

    /// The name used on the command line and in identities (`webhook:<name>`).
    pub fn name(self) -> &'static str {
        self.scheme().name
    }

    /// The provider's default timestamp window in seconds (where it signs a timestamp).
    pub fn default_tolerance_secs(self) -> u64 {
        self.scheme().tolerance_secs
    }

    pub(crate) fn scheme(self) -> &'static Scheme {
        match self {
            Provider::Github => &GITHUB,
            Provider::Stripe => &STRIPE,
            Provider::Slack => &SLACK,
            Provider::StandardWebhooks => &STANDARD_WEBHOOKS,
            Provider::Svix => &SVIX,
            Provider::Shopify => &SHOPIFY,
            Provider::Twilio => &TWILIO,
            Provider::Gitlab => &GITLAB,
            Provider::GitlabSigned => &GITLAB_SIGNED,
            Provider::Linear => &LINEAR,
            Provider::Pagerduty => &PAGERDUTY,
            Provider::Zoom => &ZOOM,
            Provider::Discord => &DISCORD,
            Provider::Paddle => &PADDLE,
            Provider::Bitbucket => &BITBUCKET,
            Provider::Gitea => &GITEA,
            Provider::Intercom => &INTERCOM,
            Provider::Square => &SQUARE,
            Provider::Twitch => &TWITCH,
            Provider::Mailgun => &MAILGUN,
            Provider::Sendgrid => &SENDGRID,
            Provider::Okta => &OKTA,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A provider name that is not in the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook provider `{given}`; known providers: {known}")]
pub struct UnknownProvider {
    given: String,
    known: String,
}

impl FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(given: &str) -> Result<Self, Self::Err> {
        let wanted = given.trim().to_ascii_lowercase().replace('_', "-");
        Provider::ALL
            .into_iter()
            .find(|provider| provider.name() == wanted)
            .ok_or_else(|| UnknownProvider {
                given: given.to_string(),
                known: Provider::ALL
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// One row of the table.
#[derive(Debug)]
pub(crate) struct Scheme {
    pub name: &'static str,
    pub family: Family,
    pub key: KeyKind,
    pub tolerance_secs: u64,
    pub replay_id: IdSource,
    pub event_header: Option<&'static str>,
    pub challenge: Option<Challenge>,
    pub methods: &'static [&'static str],
}

/// The verifier families.
#[derive(Debug)]
pub(crate) enum Family {
    /// HMAC over the raw body; signature in one header (optionally a prefixed list).
    HmacBody {
        algorithm: Algorithm,
        header: &'static str,
        signature: SignatureFormat,
        encoding: Encoding,
    },
    /// HMAC over a message built from timestamp, id, body and literals.
    HmacStamped {
        algorithm: Algorithm,
        signature: SignatureSource,
        timestamp: TimestampSource,
        message: &'static [Part],
        encoding: Encoding,
    },
    /// HMAC over the URL the sender saw (Twilio: plus sorted form params; Square: plus
    /// the body).
    HmacUrl {
        algorithm: Algorithm,
        header: &'static str,
        encoding: Encoding,
        with: UrlSigned,
    },
    /// HMAC over fields carried inside the body (Mailgun).
    HmacBodyFields,
    /// Standard Webhooks: HMAC `v1` or Ed25519 `v1a` depending on the configured key.
    StandardWebhooks,
    /// Ed25519 over a message built from the timestamp and body (Discord).
    Ed25519 {
        header: &'static str,
        timestamp: TimestampSource,
        message: &'static [Part],
        encoding: Encoding,
    },
    /// ECDSA P-256 with SHA-256 (SendGrid), DER or raw `r||s`.
    EcdsaP256 {
        header: &'static str,
        timestamp: TimestampSource,
        message: &'static [Part],
        encoding: Encoding,
    },
    /// A static token in a header, compared in constant time.
    StaticToken { header: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Sha1,
    Sha256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Hex,
    Base64,
}

/// How a plain signature header is laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SignatureFormat {
    /// One signature after an optional prefix (`sha256=`, or `""`).
    Single { prefix: &'static str },
    /// A comma-separated list of prefixed signatures (PagerDuty `v1=..,v1=..`).
    PrefixedList { prefix: &'static str },
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum SignatureSource {
    /// A header with one signature after a prefix.
    Header {
        name: &'static str,
        prefix: &'static str,
    },
    /// A header of pairs holding both the timestamp and the signatures (Stripe, Paddle).
    Stamped {
        name: &'static str,
        separator: char,
        timestamp_key: &'static str,
        signature_key: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum TimestampSource {
    /// Unix seconds in a header.
    UnixHeader(&'static str),
    /// RFC 3339 in a header (Twitch).
    Rfc3339Header(&'static str),
    /// Taken from the stamped signature header.
    InSignatureHeader,
    /// Unix milliseconds in a top-level JSON field of the body (Linear).
    BodyJsonMillis(&'static str),
}

/// A piece of the signed message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    Literal(&'static str),
    Timestamp,
    Id,
    Body,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum UrlSigned {
    /// Twilio: sorted form params after the URL, or `bodySHA256` for non-form bodies.
    TwilioParams,
    /// Square: the body after the URL.
    Body,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyKind {
    /// The secret's bytes are the HMAC key.
    HmacRaw,
    /// `whsec_<base64>` HMAC secret or `whpk_<base64>` Ed25519 public key.
    StandardWebhooks,
    /// An Ed25519 public key in hex (Discord's application public key).
    Ed25519Hex,
    /// A P-256 public key, base64 SubjectPublicKeyInfo DER or PEM (SendGrid).
    P256,
    /// A static token.
    Token,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum IdSource {
    /// The provider sends no delivery id.
    None,
    /// The first of these headers that is present.
    Header(&'static [&'static str]),
    /// A string field of the JSON body, by JSON pointer.
    BodyJson(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Challenge {
    /// Slack: `{"type":"url_verification","challenge":C}` → `C` as text.
    SlackUrlVerification,
    /// Zoom: `{"event":"endpoint.url_validation","payload":{"plainToken":P}}` →
    /// `{"plainToken":P,"encryptedToken":hex(HMAC-SHA256(secret,P))}`.
    ZoomUrlValidation,
    /// Discord: `{"type":1}` → `{"type":1}`.
    DiscordPing,
    /// Twitch: message type `webhook_callback_verification` → the body's `challenge` as
    /// text.
    TwitchCallbackVerification,
    /// Okta: `GET` with `X-Okta-Verification-Challenge: C` → `{"verification":C}`.
    OktaVerification,
}

const FIVE_MINUTES: u64 = 300;
const POST: &[&str] = &["POST"];

const STANDARD_ID_HEADERS: &[&str] = &["webhook-id", "svix-id"];

static GITHUB: Scheme = Scheme {
    name: "github",
    family: Family::HmacBody {
        algorithm: Algorithm::Sha256,
        header: "x-hub-signature-256",
        signature: SignatureFormat::Single { prefix: "sha256=" },
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::Header(&["x-github-delivery"]),
    event_header: Some("x-github-event"),
    challenge: None,
    methods: POST,
};

static STRIPE: Scheme = Scheme {
    name: "stripe",
    family: Family::HmacStamped {
        algorithm: Algorithm::Sha256,
        signature: SignatureSource::Stamped {
            name: "stripe-signature",
            separator: ',',
            timestamp_key: "t",
            signature_key: "v1",
        },
        timestamp: TimestampSource::InSignatureHeader,
        message: &[Part::Timestamp, Part::Literal("."), Part::Body],
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::BodyJson("/id"),
    event_header: None,
    challenge: None,
    methods: POST,
};

static SLACK: Scheme = Scheme {
    name: "slack",
    family: Family::HmacStamped {
        algorithm: Algorithm::Sha256,
        signature: SignatureSource::Header {
            name: "x-slack-signature",
            prefix: "v0=",
        },
        timestamp: TimestampSource::UnixHeader("x-slack-request-timestamp"),
        message: &[
            Part::Literal("v0:"),
            Part::Timestamp,
            Part::Literal(":"),
            Part::Body,
        ],
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::None,
    event_header: None,
    challenge: Some(Challenge::SlackUrlVerification),
    methods: POST,
};

static STANDARD_WEBHOOKS: Scheme = Scheme {
    name: "standard-webhooks",
    family: Family::StandardWebhooks,
    key: KeyKind::StandardWebhooks,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::Header(STANDARD_ID_HEADERS),
    event_header: None,
    challenge: None,
    methods: POST,
};

static SVIX: Scheme = Scheme {
    name: "svix",
    ..STANDARD_WEBHOOKS_BASE
};

static GITLAB_SIGNED: Scheme = Scheme {
    name: "gitlab-signed",
    event_header: Some("x-gitlab-event"),
    ..STANDARD_WEBHOOKS_BASE
};

const STANDARD_WEBHOOKS_BASE: Scheme = Scheme {
    name: "standard-webhooks",
    family: Family::StandardWebhooks,
    key: KeyKind::StandardWebhooks,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::Header(STANDARD_ID_HEADERS),
    event_header: None,
    challenge: None,
    methods: POST,
};

static SHOPIFY: Scheme = Scheme {
    name: "shopify",
    family: Family::HmacBody {
        algorithm: Algorithm::Sha256,
        header: "x-shopify-hmac-sha256",
        signature: SignatureFormat::Single { prefix: "" },
        encoding: Encoding::Base64,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::Header(&["x-shopify-webhook-id"]),
    event_header: Some("x-shopify-topic"),
    challenge: None,
    methods: POST,
};

static TWILIO: Scheme = Scheme {
    name: "twilio",
    family: Family::HmacUrl {
        algorithm: Algorithm::Sha1,
        header: "x-twilio-signature",
        encoding: Encoding::Base64,
        with: UrlSigned::TwilioParams,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::Header(&["i-twilio-idempotency-token"]),
    event_header: None,
    challenge: None,
    methods: &["POST", "GET"],
};

static GITLAB: Scheme = Scheme {
    name: "gitlab",
    family: Family::StaticToken {
        header: "x-gitlab-token",
    },
    key: KeyKind::Token,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::Header(&["idempotency-key"]),
    event_header: Some("x-gitlab-event"),
    challenge: None,
    methods: POST,
};

static LINEAR: Scheme = Scheme {
    name: "linear",
    family: Family::HmacStamped {
        algorithm: Algorithm::Sha256,
        signature: SignatureSource::Header {
            name: "linear-signature",
            prefix: "",
        },
        timestamp: TimestampSource::BodyJsonMillis("webhookTimestamp"),
        message: &[Part::Body],
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    // Linear's guide: reject deliveries whose webhookTimestamp is over a minute away.
    tolerance_secs: 60,
    replay_id: IdSource::Header(&["linear-delivery"]),
    event_header: Some("linear-event"),
    challenge: None,
    methods: POST,
};

static PAGERDUTY: Scheme = Scheme {
    name: "pagerduty",
    family: Family::HmacBody {
        algorithm: Algorithm::Sha256,
        header: "x-pagerduty-signature",
        signature: SignatureFormat::PrefixedList { prefix: "v1=" },
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::BodyJson("/event/id"),
    event_header: None,
    challenge: None,
    methods: POST,
};

static ZOOM: Scheme = Scheme {
    name: "zoom",
    family: Family::HmacStamped {
        algorithm: Algorithm::Sha256,
        signature: SignatureSource::Header {
            name: "x-zm-signature",
            prefix: "v0=",
        },
        timestamp: TimestampSource::UnixHeader("x-zm-request-timestamp"),
        message: &[
            Part::Literal("v0:"),
            Part::Timestamp,
            Part::Literal(":"),
            Part::Body,
        ],
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::None,
    event_header: None,
    challenge: Some(Challenge::ZoomUrlValidation),
    methods: POST,
};

static DISCORD: Scheme = Scheme {
    name: "discord",
    family: Family::Ed25519 {
        header: "x-signature-ed25519",
        timestamp: TimestampSource::UnixHeader("x-signature-timestamp"),
        message: &[Part::Timestamp, Part::Body],
        encoding: Encoding::Hex,
    },
    key: KeyKind::Ed25519Hex,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::BodyJson("/id"),
    event_header: None,
    challenge: Some(Challenge::DiscordPing),
    methods: POST,
};

static PADDLE: Scheme = Scheme {
    name: "paddle",
    family: Family::HmacStamped {
        algorithm: Algorithm::Sha256,
        signature: SignatureSource::Stamped {
            name: "paddle-signature",
            separator: ';',
            timestamp_key: "ts",
            signature_key: "h1",
        },
        timestamp: TimestampSource::InSignatureHeader,
        message: &[Part::Timestamp, Part::Literal(":"), Part::Body],
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::BodyJson("/notification_id"),
    event_header: None,
    challenge: None,
    methods: POST,
};

static BITBUCKET: Scheme = Scheme {
    name: "bitbucket",
    family: Family::HmacBody {
        algorithm: Algorithm::Sha256,
        header: "x-hub-signature",
        signature: SignatureFormat::Single { prefix: "sha256=" },
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::Header(&["x-request-uuid"]),
    event_header: Some("x-event-key"),
    challenge: None,
    methods: POST,
};

static GITEA: Scheme = Scheme {
    name: "gitea",
    family: Family::HmacBody {
        algorithm: Algorithm::Sha256,
        header: "x-gitea-signature",
        signature: SignatureFormat::Single { prefix: "" },
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::Header(&["x-gitea-delivery"]),
    event_header: Some("x-gitea-event"),
    challenge: None,
    methods: POST,
};

static INTERCOM: Scheme = Scheme {
    name: "intercom",
    family: Family::HmacBody {
        algorithm: Algorithm::Sha1,
        header: "x-hub-signature",
        signature: SignatureFormat::Single { prefix: "sha1=" },
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::BodyJson("/id"),
    event_header: None,
    challenge: None,
    methods: POST,
};

static SQUARE: Scheme = Scheme {
    name: "square",
    family: Family::HmacUrl {
        algorithm: Algorithm::Sha256,
        header: "x-square-hmacsha256-signature",
        encoding: Encoding::Base64,
        with: UrlSigned::Body,
    },
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::BodyJson("/event_id"),
    event_header: None,
    challenge: None,
    methods: POST,
};

static TWITCH: Scheme = Scheme {
    name: "twitch",
    family: Family::HmacStamped {
        algorithm: Algorithm::Sha256,
        signature: SignatureSource::Header {
            name: "twitch-eventsub-message-signature",
            prefix: "sha256=",
        },
        timestamp: TimestampSource::Rfc3339Header("twitch-eventsub-message-timestamp"),
        message: &[Part::Id, Part::Timestamp, Part::Body],
        encoding: Encoding::Hex,
    },
    key: KeyKind::HmacRaw,
    // Twitch's EventSub guide: reject messages older than 10 minutes.
    tolerance_secs: 600,
    replay_id: IdSource::Header(&["twitch-eventsub-message-id"]),
    event_header: Some("twitch-eventsub-subscription-type"),
    challenge: Some(Challenge::TwitchCallbackVerification),
    methods: POST,
};

static MAILGUN: Scheme = Scheme {
    name: "mailgun",
    family: Family::HmacBodyFields,
    key: KeyKind::HmacRaw,
    tolerance_secs: FIVE_MINUTES,
    // The token is inside the signed fields; the family reads it itself.
    replay_id: IdSource::None,
    event_header: None,
    challenge: None,
    methods: POST,
};

static SENDGRID: Scheme = Scheme {
    name: "sendgrid",
    family: Family::EcdsaP256 {
        header: "x-twilio-email-event-webhook-signature",
        timestamp: TimestampSource::UnixHeader("x-twilio-email-event-webhook-timestamp"),
        message: &[Part::Timestamp, Part::Body],
        encoding: Encoding::Base64,
    },
    key: KeyKind::P256,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::None,
    event_header: None,
    challenge: None,
    methods: POST,
};

static OKTA: Scheme = Scheme {
    name: "okta",
    family: Family::StaticToken {
        header: "authorization",
    },
    key: KeyKind::Token,
    tolerance_secs: FIVE_MINUTES,
    replay_id: IdSource::BodyJson("/eventId"),
    event_header: None,
    challenge: Some(Challenge::OktaVerification),
    methods: &["POST", "GET"],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for provider in Provider::ALL {
            assert!(seen.insert(provider.name()), "{provider} twice");
            assert_eq!(provider.name().parse::<Provider>(), Ok(provider));
        }
        assert_eq!("Standard_Webhooks".parse(), Ok(Provider::StandardWebhooks));
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let error = "githib".parse::<Provider>().unwrap_err().to_string();
        assert!(
            error.starts_with("unknown webhook provider `githib`; known providers: github, stripe"),
            "{error}"
        );
    }
}
