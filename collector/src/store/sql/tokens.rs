//! Invites and probes: registration, authentication, revocation, and which probes count in a
//! quorum (old enough and seen in enough distinct hours).

use async_trait::async_trait;

use super::*;

#[async_trait]
impl<S: SqlStore> TokenStore for S {
    async fn create_invite(&self, invite: &NewInvite) -> StoreResult<()> {
        let mut q = S::query(
            "INSERT INTO invites (id, token_hash, note, max_uses, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        );
        q.arg(&invite.id)
            .arg(&invite.token_hash)
            .arg(&invite.note)
            .arg(invite.max_uses)
            .arg(invite.created_at)
            .arg(invite.expires_at);
        self.exec(&q).await?;
        Ok(())
    }

    async fn register_probe(
        &self,
        probe: &NewProbe,
        invite_hash: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let mut invite_id: Option<String> = None;
        if let Some(hash) = invite_hash {
            // The row lock of the UPDATE serialises concurrent registrations on one invite.
            let mut q = S::query(
                "UPDATE invites SET uses = uses + 1 \
                 WHERE token_hash = ? AND revoked_at IS NULL \
                   AND (expires_at IS NULL OR expires_at > ?) AND uses < max_uses \
                 RETURNING id",
            );
            q.arg(hash).arg(now);
            match S::tx_all(&mut tx, &q).await?.first() {
                Some(row) => invite_id = Some(row.string("id")?),
                None => {
                    S::rollback(tx).await?;
                    return Ok(false);
                }
            }
        }
        let mut q = S::query(
            "INSERT INTO probes (id, token_hash, invite_id, created_at) VALUES (?, ?, ?, ?)",
        );
        q.arg(&probe.id)
            .arg(&probe.token_hash)
            .arg(&invite_id)
            .arg(probe.created_at);
        S::tx_exec(&mut tx, &q).await?;
        S::commit(tx).await?;
        Ok(true)
    }

    async fn authenticate(&self, token_hash: &str) -> StoreResult<Option<String>> {
        let mut q = S::query("SELECT id FROM probes WHERE token_hash = ? AND revoked_at IS NULL");
        q.arg(token_hash);
        self.all(&q)
            .await?
            .first()
            .map(|r| r.string("id"))
            .transpose()
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let mut out = Vec::new();
        let invites = S::query(
            "SELECT id, note, max_uses, uses, created_at, expires_at, revoked_at \
             FROM invites ORDER BY created_at, id",
        );
        for r in &self.all(&invites).await? {
            let count = |c: &str| -> StoreResult<u32> {
                u32::try_from(r.num(c)?).map_err(|_| StoreError::Corrupt(c.to_string()))
            };
            out.push(TokenInfo {
                id: r.string("id")?,
                kind: "invite",
                created_at: r.time("created_at")?,
                revoked_at: r.opt_time("revoked_at")?,
                expires_at: r.opt_time("expires_at")?,
                uses: Some(count("uses")?),
                max_uses: Some(count("max_uses")?),
                note: r.text("note")?,
                last_seen_at: None,
            });
        }
        let probes = S::query(
            "SELECT id, created_at, revoked_at, last_seen_at FROM probes ORDER BY created_at, id",
        );
        for r in &self.all(&probes).await? {
            out.push(TokenInfo {
                id: r.string("id")?,
                kind: "probe",
                created_at: r.time("created_at")?,
                revoked_at: r.opt_time("revoked_at")?,
                expires_at: None,
                uses: None,
                max_uses: None,
                note: None,
                last_seen_at: r.opt_time("last_seen_at")?,
            });
        }
        Ok(out)
    }

    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        for table in ["invites", "probes"] {
            let mut q = S::query(&format!(
                "UPDATE {table} SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
            ));
            q.arg(now).arg(id);
            if self.exec(&q).await? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn established_probes(
        &self,
        probes: &[String],
        registered_by: DateTime<Utc>,
        min_hours: u32,
    ) -> StoreResult<HashSet<String>> {
        let mut out = HashSet::new();
        for part in probes.chunks(400) {
            // Each probe's hours are one range of the (probe_id, hour) index, read only for
            // the probes old enough; the count stops at `min_hours` rows.
            let mut q = S::query(
                "SELECT p.id AS probe_id FROM probes p \
                 WHERE p.revoked_at IS NULL AND p.created_at <= ",
            );
            q.bind(registered_by)
                .push(" AND p.id IN (")
                .bind_list(part.iter().map(String::as_str))
                .push(
                    ") AND (SELECT COUNT(*) FROM (SELECT DISTINCT h.hour FROM probe_hours h \
                     WHERE h.probe_id = p.id LIMIT ",
                )
                .bind(i64::from(min_hours))
                .push(") AS hours) >= ")
                .bind(i64::from(min_hours));
            for r in self.all(&q).await? {
                out.insert(r.string("probe_id")?);
            }
        }
        Ok(out)
    }
}
