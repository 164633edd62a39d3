//! Single sign-on identities: the hub user each (OIDC provider, subject) logs in as.

use super::{Result, Store, StoreError, now, on_pool, ts};
use crate::store::models::User;

impl Store {
    /// The user the subject `subject` of `provider` logs in as, if it logged in before.
    pub async fn oidc_identity_user(&self, provider: &str, subject: &str) -> Result<Option<User>> {
        let user_id = on_pool!(self, p => sqlx::query_scalar::<_, i64>(
            "SELECT user_id FROM oidc_identities WHERE provider = $1 AND subject = $2",
        )
        .bind(provider)
        .bind(subject)
        .fetch_optional(p)
        .await?);
        match user_id {
            Some(id) => match self.get_user_by_id(id).await {
                Ok(user) => Ok(Some(user)),
                Err(StoreError::NotFound) => Ok(None),
                Err(e) => Err(e),
            },
            None => Ok(None),
        }
    }

    /// Whether some OIDC identity already logs in as user `user_id`.
    pub async fn user_has_oidc_identity(&self, user_id: i64) -> Result<bool> {
        let n = on_pool!(self, p => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM oidc_identities WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_one(p)
        .await?);
        Ok(n > 0)
    }

    /// Records that the subject `subject` of `provider` logs in as user `user_id`. `Conflict`
    /// if that identity is already linked (to any user).
    pub async fn link_oidc_identity(
        &self,
        provider: &str,
        subject: &str,
        user_id: i64,
    ) -> Result<()> {
        let inserted = on_pool!(self, p => sqlx::query(
            "INSERT INTO oidc_identities (provider, subject, user_id, created) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (provider, subject) DO NOTHING",
        )
        .bind(provider)
        .bind(subject)
        .bind(user_id)
        .bind(ts(now()))
        .execute(p)
        .await?
        .rows_affected());
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "the {provider} identity is already linked to a user"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identities_link_once() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let alice = store.create_user("alice", false).await.unwrap();
        assert_eq!(store.oidc_identity_user("egi", "s-1").await.unwrap(), None);
        assert!(!store.user_has_oidc_identity(alice.id).await.unwrap());
        store
            .link_oidc_identity("egi", "s-1", alice.id)
            .await
            .unwrap();
        assert_eq!(
            store.oidc_identity_user("egi", "s-1").await.unwrap(),
            Some(alice.clone())
        );
        assert!(store.user_has_oidc_identity(alice.id).await.unwrap());
        // The same subject at another provider is another identity.
        assert_eq!(
            store.oidc_identity_user("centre", "s-1").await.unwrap(),
            None
        );
        let bob = store.create_user("bob", false).await.unwrap();
        assert!(matches!(
            store.link_oidc_identity("egi", "s-1", bob.id).await,
            Err(StoreError::Conflict(_))
        ));
        // One identity per account: another subject (a racing claim) cannot link alice too.
        assert!(matches!(
            store.link_oidc_identity("centre", "s-2", alice.id).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.oidc_identity_user("centre", "s-2").await.unwrap(),
            None
        );
        // Deleting the user deletes its identities.
        store.delete_user("alice").await.unwrap();
        assert_eq!(store.oidc_identity_user("egi", "s-1").await.unwrap(), None);
    }
}
