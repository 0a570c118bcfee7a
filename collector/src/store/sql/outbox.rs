//! The notification outbox: claiming due rows under a lease, and recording each delivery or
//! failed attempt.

use async_trait::async_trait;

use super::*;

#[async_trait]
impl<S: SqlStore> OutboxStore for S {
    async fn claim_notifications(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Notification>> {
        self.claim(now, lease_until, limit).await
    }

    async fn notification_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()> {
        let mut q =
            S::query("UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?");
        q.arg(now).arg(id);
        self.exec(&q).await?;
        Ok(())
    }

    async fn notification_failed(
        &self,
        id: i64,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut q = S::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, \
             next_attempt_at = COALESCE(?, next_attempt_at), \
             abandoned_at = CASE WHEN ? IS NULL THEN ? ELSE NULL END WHERE id = ?",
        );
        q.arg(error).arg(retry_at).arg(retry_at).arg(now).arg(id);
        self.exec(&q).await?;
        Ok(())
    }
}
