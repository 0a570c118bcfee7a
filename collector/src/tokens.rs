//! `witness-collector token create|list|revoke`: invite and probe tokens, on the store directly.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::auth;
use crate::config::HumanDuration;
use crate::store::{NewInvite, Store, StoreResult, TokenInfo};

/// A created invite: the token is shown once.
#[derive(Debug, Clone)]
pub struct CreatedInvite {
    /// Id, to list and revoke.
    pub id: String,
    /// The secret to give the volunteer.
    pub token: String,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Create an invite for `uses` registrations, valid for `valid_for` if given.
pub async fn create(
    store: &dyn Store,
    uses: u32,
    valid_for: Option<HumanDuration>,
    note: Option<String>,
) -> StoreResult<CreatedInvite> {
    let now = Utc::now();
    let token = auth::new_token();
    let invite = NewInvite {
        id: format!("inv-{}", auth::new_short_id()),
        token_hash: auth::hash_token(&token),
        note,
        max_uses: uses.max(1),
        expires_at: valid_for.map(|d| now + d.to_chrono()),
        created_at: now,
    };
    store.create_invite(&invite).await?;
    Ok(CreatedInvite {
        id: invite.id,
        token,
        expires_at: invite.expires_at,
    })
}

/// Revoke an invite or a probe; `false` when there is no such live id.
pub async fn revoke(store: &dyn Store, id: &str) -> StoreResult<bool> {
    store.revoke(id, Utc::now()).await
}

fn day(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.format("%Y-%m-%d").to_string())
}

/// A plain-text table of every token.
pub fn table(tokens: &[TokenInfo]) -> String {
    let mut out = format!(
        "{:<38} {:<6} {:<10} {:<7} {:<10} {:<10} {:<10} NOTE\n",
        "ID", "KIND", "CREATED", "USES", "EXPIRES", "REVOKED", "LAST SEEN"
    );
    for t in tokens {
        let uses = match (t.uses, t.max_uses) {
            (Some(u), Some(m)) => format!("{u}/{m}"),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<38} {:<6} {:<10} {:<7} {:<10} {:<10} {:<10} {}",
            t.id,
            t.kind,
            day(Some(t.created_at)),
            uses,
            day(t.expires_at),
            day(t.revoked_at),
            day(t.last_seen_at),
            t.note.as_deref().unwrap_or("")
        );
    }
    out
}
