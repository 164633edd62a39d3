//! Defence in depth: the proxy refuses a request for a user's server unless the caller holds
//! `access:servers` for it, on top of the single-user server's own OAuth.
//!
//! Decisions are cached for a short time (10 s by default) per credential, owner and server, so
//! the hot path does not hit the database on every request. The price is a revocation delay: a
//! revoked token, an ended session, a removed admin flag or group membership still opens a
//! server through a given proxy for up to that long after the change.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::Error;
pub use super::paths::Credential;
use crate::scopes::{Filter, ScopeSet, implies};
use crate::store::{Store, StoreError, now};

/// What an [`Authorizer`] says about one credential and one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The caller may use the server.
    Allow,
    /// The caller is known and may not.
    Deny,
    /// The credential is not valid (unknown, expired, a session not logged in).
    Unknown,
}

/// Decides whether a credential grants access to a server.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `credential` grants `access:servers` on the server `server` of `owner`.
    fn authorize<'a>(
        &'a self,
        credential: &'a Credential,
        owner: &'a str,
        server: &'a str,
    ) -> BoxFuture<'a, Result<Verdict, Error>>;
}

/// Authorization from the hub's database, with JupyterHub's rules: a token's scopes intersected
/// with its owner's current ones (a service token keeps its own), a session's user has their
/// roles' scopes (`self`, plus the admin role for admins); access iff the scopes grant
/// `access:servers` on the server, `!group=` filters matched against the owner's groups.
#[derive(Debug, Clone)]
pub struct StoreAuthorizer {
    store: Store,
}

impl StoreAuthorizer {
    pub fn new(store: Store) -> Self {
        StoreAuthorizer { store }
    }

    async fn scopes(&self, credential: &Credential) -> Result<Option<ScopeSet>, Error> {
        let at = now();
        match credential {
            Credential::Token(token) => {
                let identity = match self.store.lookup_token(token, at).await {
                    Ok(identity) => identity,
                    Err(StoreError::NotFound) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let owner = identity.user.as_ref().map(|u| u.name.as_str());
                let held = parse_lenient(&identity.token.scopes, owner);
                Ok(Some(match &identity.user {
                    Some(user) => held.intersect(&ScopeSet::for_user(&user.name, user.admin)),
                    None => held,
                }))
            }
            Credential::Session(cookie) => match self.store.get_session(cookie, at).await {
                Ok(identity) => Ok(identity
                    .user
                    .map(|user| ScopeSet::for_user(&user.name, user.admin))),
                Err(StoreError::NotFound) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    async fn owner_groups(&self, owner: &str) -> Result<BTreeSet<String>, Error> {
        let user = match self.store.get_user(owner).await {
            Ok(user) => user,
            Err(StoreError::NotFound) => return Ok(BTreeSet::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(self.store.user_groups(user.id).await?.into_iter().collect())
    }
}

/// Parses stored scopes one by one, skipping any this version does not know (logged).
fn parse_lenient(scopes: &[String], owner: Option<&str>) -> ScopeSet {
    match ScopeSet::parse(scopes, owner) {
        Ok(set) => set,
        Err(_) => {
            let known: Vec<&String> = scopes
                .iter()
                .filter(|s| match ScopeSet::parse(&[s.as_str()], owner) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "token scope ignored");
                        false
                    }
                })
                .collect();
            ScopeSet::parse(&known, owner).unwrap_or_default()
        }
    }
}

impl Authorizer for StoreAuthorizer {
    fn authorize<'a>(
        &'a self,
        credential: &'a Credential,
        owner: &'a str,
        server: &'a str,
    ) -> BoxFuture<'a, Result<Verdict, Error>> {
        Box::pin(async move {
            let Some(scopes) = self.scopes(credential).await? else {
                return Ok(Verdict::Unknown);
            };
            // The owner's groups matter only to a group-filtered scope that could grant access.
            let by_group = scopes.iter().any(|s| {
                matches!(s.filter, Filter::Group(_)) && implies(&s.name, "access:servers")
            });
            let groups = if by_group {
                self.owner_groups(owner).await?
            } else {
                BTreeSet::new()
            };
            Ok(if scopes.may_access_server(owner, server, &groups) {
                Verdict::Allow
            } else {
                Verdict::Deny
            })
        })
    }
}

/// The outcome for a request with all its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Allowed,
    /// A valid credential, without access.
    Forbidden,
    /// No valid credential.
    Unauthenticated,
}

/// Most cached decisions; past it, expired ones are dropped, and all of them if that is not
/// enough.
const MAX_DECISIONS: usize = 100_000;

/// An [`Authorizer`] with a cache of its verdicts.
pub(crate) struct AuthGate {
    authorizer: Arc<dyn Authorizer>,
    ttl: Duration,
    decisions: RwLock<HashMap<[u8; 32], (Verdict, Instant)>>,
}

impl AuthGate {
    pub(crate) fn new(authorizer: Arc<dyn Authorizer>, ttl: Duration) -> Self {
        AuthGate {
            authorizer,
            ttl,
            decisions: RwLock::new(HashMap::new()),
        }
    }

    /// Allowed if any credential allows, forbidden if some valid one does not, unauthenticated
    /// otherwise.
    pub(crate) async fn check(
        &self,
        credentials: &[Credential],
        owner: &str,
        server: &str,
    ) -> Result<Access, Error> {
        let mut access = Access::Unauthenticated;
        for credential in credentials {
            match self.verdict(credential, owner, server).await? {
                Verdict::Allow => return Ok(Access::Allowed),
                Verdict::Deny => access = Access::Forbidden,
                Verdict::Unknown => {}
            }
        }
        Ok(access)
    }

    async fn verdict(
        &self,
        credential: &Credential,
        owner: &str,
        server: &str,
    ) -> Result<Verdict, Error> {
        let key = cache_key(credential, owner, server);
        let cached = self
            .decisions
            .read()
            .expect("decision lock poisoned")
            .get(&key)
            .copied();
        if let Some((verdict, at)) = cached
            && at.elapsed() < self.ttl
        {
            return Ok(verdict);
        }
        let verdict = match self.authorizer.authorize(credential, owner, server).await {
            Ok(verdict) => verdict,
            // The database is out of reach: a verdict at most `OUTAGE_VERDICT_MAX_AGE` old
            // stands until it is back (nothing can be revoked in a database nobody can write
            // to). An older one is not used: the credential may have been revoked since, before
            // the outage. A credential not seen lately gets the 503.
            Err(Error::Store(e)) if e.is_unavailable() => match cached {
                Some((verdict, at)) if at.elapsed() < OUTAGE_VERDICT_MAX_AGE => {
                    tracing::warn!(error = %e, ?verdict, "database unavailable: keeping the last verdict");
                    return Ok(verdict);
                }
                _ => return Err(Error::Store(e)),
            },
            Err(e) => return Err(e),
        };
        let mut decisions = self.decisions.write().expect("decision lock poisoned");
        if decisions.len() >= MAX_DECISIONS {
            let ttl = self.ttl;
            decisions.retain(|_, (_, at)| at.elapsed() < ttl);
            if decisions.len() >= MAX_DECISIONS {
                decisions.clear();
            }
        }
        decisions.insert(key, (verdict, Instant::now()));
        Ok(verdict)
    }
}

/// SHA-256 of the credential (with its kind), the owner and the server: credentials are never
/// kept in clear.
fn cache_key(credential: &Credential, owner: &str, server: &str) -> [u8; 32] {
    let (kind, value) = match credential {
        Credential::Token(t) => (b"t", t),
        Credential::Session(s) => (b"s", s),
    };
    let mut h = Sha256::new();
    h.update(kind);
    h.update((value.len() as u64).to_le_bytes());
    h.update(value.as_bytes());
    h.update((owner.len() as u64).to_le_bytes());
    h.update(owner.as_bytes());
    h.update(server.as_bytes());
    h.finalize().into()
}

/// The oldest verdict the proxy keeps using while the database is out of reach: a credential
/// revoked at most this long before an outage may still pass during it.
pub const OUTAGE_VERDICT_MAX_AGE: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Allows the token `alice` for alice while the database is "up"; fails as an unreachable
    /// database otherwise.
    struct Outage(AtomicBool);

    impl Authorizer for Outage {
        fn authorize<'a>(
            &'a self,
            _credential: &'a Credential,
            _owner: &'a str,
            _server: &'a str,
        ) -> BoxFuture<'a, Result<Verdict, Error>> {
            let down = self.0.load(Ordering::SeqCst);
            Box::pin(async move {
                if down {
                    Err(Error::Store(crate::store::StoreError::Unavailable(
                        sqlx::Error::PoolTimedOut,
                    )))
                } else {
                    Ok(Verdict::Allow)
                }
            })
        }
    }

    #[tokio::test]
    async fn an_outage_keeps_recent_verdicts_only() {
        let outage = Arc::new(Outage(AtomicBool::new(false)));
        let gate = AuthGate::new(outage.clone(), Duration::ZERO);
        let cred = [Credential::Token("alice".into())];
        assert_eq!(
            gate.check(&cred, "alice", "").await.unwrap(),
            Access::Allowed
        );
        outage.0.store(true, Ordering::SeqCst);
        // A verdict of a moment ago stands while the database is away…
        assert_eq!(
            gate.check(&cred, "alice", "").await.unwrap(),
            Access::Allowed
        );
        // …one older than the bound does not: it may predate a revocation.
        let key = cache_key(&cred[0], "alice", "");
        let old = Instant::now()
            .checked_sub(OUTAGE_VERDICT_MAX_AGE + Duration::from_secs(1))
            .expect("the clock is older than the bound");
        gate.decisions
            .write()
            .unwrap()
            .insert(key, (Verdict::Allow, old));
        assert!(gate.check(&cred, "alice", "").await.is_err());
        // A credential never seen gets the error too.
        let other = [Credential::Token("bob".into())];
        assert!(gate.check(&other, "bob", "").await.is_err());
    }

    struct Counting(AtomicUsize);

    impl Authorizer for Counting {
        fn authorize<'a>(
            &'a self,
            credential: &'a Credential,
            owner: &'a str,
            _server: &'a str,
        ) -> BoxFuture<'a, Result<Verdict, Error>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let verdict = match credential {
                Credential::Token(t) if t == owner => Verdict::Allow,
                Credential::Token(t) if t == "bad" => Verdict::Unknown,
                _ => Verdict::Deny,
            };
            Box::pin(async move { Ok(verdict) })
        }
    }

    #[tokio::test]
    async fn any_allowing_credential_wins_and_verdicts_are_cached() {
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let gate = AuthGate::new(counting.clone(), Duration::from_secs(60));
        let tok = |t: &str| Credential::Token(t.to_owned());
        assert_eq!(
            gate.check(&[tok("bad"), tok("alice")], "alice", "")
                .await
                .unwrap(),
            Access::Allowed
        );
        assert_eq!(
            gate.check(&[tok("bob"), tok("bad")], "alice", "")
                .await
                .unwrap(),
            Access::Forbidden
        );
        assert_eq!(
            gate.check(&[tok("bad")], "alice", "").await.unwrap(),
            Access::Unauthenticated
        );
        assert_eq!(counting.0.load(Ordering::SeqCst), 3);
        for _ in 0..10 {
            gate.check(&[tok("bob"), tok("bad")], "alice", "")
                .await
                .unwrap();
        }
        assert_eq!(counting.0.load(Ordering::SeqCst), 3);
        // The key covers owner and server.
        gate.check(&[tok("bob")], "alice", "gpu").await.unwrap();
        assert_eq!(counting.0.load(Ordering::SeqCst), 4);
        assert_ne!(
            cache_key(&tok("x"), "ab", "c"),
            cache_key(&tok("x"), "a", "bc")
        );
        assert_ne!(
            cache_key(&tok("x"), "a", ""),
            cache_key(&Credential::Session("x".into()), "a", "")
        );
    }

    #[tokio::test]
    async fn expired_verdicts_are_asked_again() {
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        let gate = AuthGate::new(counting.clone(), Duration::ZERO);
        let cred = [Credential::Token("alice".into())];
        gate.check(&cred, "alice", "").await.unwrap();
        gate.check(&cred, "alice", "").await.unwrap();
        assert_eq!(counting.0.load(Ordering::SeqCst), 2);
    }
}
