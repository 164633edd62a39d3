//! Unit tests of the claim mapping, the configuration and the ID token validation (tokens
//! signed here with a test-only RSA key).

use chrono::{Duration as ChronoDuration, Utc};
use openidconnect::core::CoreRsaPrivateSigningKey;
use openidconnect::{Audience, JsonWebKeyId, PrivateSigningKey, StandardClaims, SubjectIdentifier};

use super::*;

#[test]
fn usernames_are_normalised() {
    let table: &[(&str, Option<&str>)] = &[
        ("alice", Some("alice")),
        ("Alice.Smith", Some("alice-smith")),
        ("alice@uni.example.org", Some("alice-uni-example-org")),
        ("12345@egi.eu", Some("12345-egi-eu")),
        ("José", Some("jos")),
        ("  bob  ", Some("bob")),
        ("a__b--c", Some("a-b-c")),
        ("-x-", Some("x")),
        ("@@@", None),
        ("", None),
        ("ééé", None),
        // Path and markup characters are separators: never a path, never markup.
        ("../evil", Some("evil")),
        ("..", None),
        ("a/../../b", Some("a-b")),
        ("<script>alert(1)</script>", Some("script-alert-1-script")),
        (
            "\"><img src=x onerror=alert(1)>",
            Some("img-src-x-onerror-alert-1"),
        ),
        // Unicode look-alikes are not letters here: dropped or separators, never their ASCII twin.
        ("аdmin", Some("dmin")),         // Cyrillic а
        ("admіn", Some("adm-n")),        // Cyrillic і
        ("ａｄｍｉｎ", None),            // fullwidth
        ("admin\u{301}", Some("admin")), // a combining acute accent: see is_exact_username
        ("a\u{301}dmin", Some("a-dmin")),
        ("ad\u{200d}min", Some("ad-min")), // a zero-width joiner
        ("admin\u{200d}", Some("admin")),
        ("\u{200b}", None),
    ];
    for (raw, expected) in table {
        assert_eq!(normalize_username(raw).as_deref(), *expected, "{raw:?}");
        if let Some(name) = normalize_username(raw) {
            assert!(
                is_valid_user_name(&name),
                "{raw:?} gives the invalid {name:?}"
            );
        }
    }
    let long = normalize_username(&"a.".repeat(100)).unwrap();
    assert!(long.len() <= 63 && is_valid_user_name(&long), "{long}");
}

#[test]
fn only_an_unchanged_claim_is_exact() {
    for (raw, name) in [("alice", "alice"), ("Alice", "alice"), (" ALICE ", "alice")] {
        assert!(is_exact_username(raw, name), "{raw:?} is exactly {name:?}");
    }
    for raw in [
        "alice.",
        "-alice",
        "../alice",
        "alice@uni.example.org",
        "аlice",         // Cyrillic а: gives "lice", not exact either
        "ａlice",        // fullwidth
        "alice\u{301}",  // combining mark
        "alice\u{200d}", // zero-width joiner
        "alice\u{200b}", // zero-width space
        "alice\u{a0}",   // no-break space
        "Alice\u{212a}", // Kelvin sign K
    ] {
        let name = normalize_username(raw).unwrap_or_default();
        assert!(
            !is_exact_username(raw, &name),
            "{raw:?} (→ {name:?}) must not count as exact"
        );
    }
}

#[test]
fn entitlements_map_to_groups() {
    let table: &[(&str, &[&str])] = &[
        (
            "urn:mace:egi.eu:group:vo.example.org:role=member#aai.egi.eu",
            &["vo.example.org", "vo.example.org:role=member"],
        ),
        (
            "urn:mace:egi.eu:group:vo.example.org:sub:role=member#aai.egi.eu",
            &["vo.example.org:sub", "vo.example.org:sub:role=member"],
        ),
        (
            "urn:mace:egi.eu:group:vo.example.org#aai.egi.eu",
            &["vo.example.org"],
        ),
        (
            "urn:geant:example.org:group:climate:role=manager#example.org",
            &["climate", "climate:role=manager"],
        ),
        ("urn:mace:example.org:entitlement:library", &[]),
        ("urn:mace:egi.eu:group:#aai.egi.eu", &[]),
        ("", &[]),
    ];
    for (value, expected) in table {
        assert_eq!(entitlement_groups(value), *expected, "{value:?}");
    }
}

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}

#[test]
fn groups_come_from_the_configured_claims() {
    let c = claims(json!({
        "sub": "1",
        "groups": ["ocean-physics", "/climate", "ocean-physics"],
        "eduperson_entitlement": "urn:mace:egi.eu:group:vo.example.org:role=member#aai.egi.eu",
        "roles": ["x"],
    }));
    let default = vec!["groups".to_owned(), "eduperson_entitlement".to_owned()];
    assert_eq!(
        groups_from_claims(&c, &default),
        [
            "climate",
            "ocean-physics",
            "vo.example.org",
            "vo.example.org:role=member"
        ]
    );
    assert_eq!(groups_from_claims(&c, &["roles".to_owned()]), ["x"]);
    assert!(groups_from_claims(&c, &["missing".to_owned()]).is_empty());
}

fn settings() -> OidcProvider {
    OidcProviderEntry {
        name: "centre".into(),
        display_name: Some("Centre".into()),
        issuer: "https://idp.example.org/realms/vre".into(),
        client_id: "atelier".into(),
        client_secret_file: None,
        client_secret_env: Some("SECRET".into()),
        scopes: None,
        username_claim: None,
        group_claims: None,
        admin_groups: vec!["vre-admins".into()],
        allowed_groups: vec!["ocean-physics".into(), "vre-admins".into()],
    }
    .resolve(
        |_| Err(std::io::ErrorKind::NotFound.into()),
        |_| Some("s3cr3t-value".into()),
    )
    .unwrap()
}

#[test]
fn config_parses_and_never_shows_the_secret() {
    let yaml = "providers:\n  - name: centre\n    issuer: https://idp.example.org/realms/vre\n    \
                client_id: atelier\n    client_secret_file: /run/secret\n  - name: egi\n    \
                display_name: EGI Check-in\n    issuer: https://aai.egi.eu/auth/realms/egi\n    \
                client_id: x\n    client_secret_env: EGI_SECRET\n    \
                username_claim: eduperson_principal_name\n    allowed_groups: [vo.example.org]\n";
    let providers = parse_config(
        yaml,
        false,
        |f| {
            assert_eq!(f, "/run/secret");
            Ok("file-secret\n".into())
        },
        |v| (v == "EGI_SECRET").then(|| "env-secret".to_owned()),
    )
    .unwrap();
    assert_eq!(providers.len(), 2);
    assert_eq!(providers[0].client_secret, "file-secret");
    assert_eq!(providers[0].display_name, "centre");
    assert_eq!(providers[0].scopes, ["openid", "profile", "email"]);
    assert_eq!(providers[0].username_claim, "preferred_username");
    assert_eq!(providers[1].client_secret, "env-secret");
    assert_eq!(providers[1].username_claim, "eduperson_principal_name");
    for p in &providers {
        let shown = format!("{p:?}");
        assert!(!shown.contains("secret\""), "{shown}");
        assert!(!shown.contains("file-secret") && !shown.contains("env-secret"));
        assert!(shown.contains("<redacted>"));
    }
    let bad_issuer = r#"{"providers": [{"name": "a", "issuer": "not a url", "client_id": "c"}]}"#;
    assert!(parse_config(bad_issuer, true, |_| unreachable!(), |_| None).is_err());
    let json = r#"{"providers": [{"name": "Bad Name", "issuer": "https://x", "client_id": "c"}]}"#;
    assert!(parse_config(json, true, |_| unreachable!(), |_| None).is_err());
    let twice = r#"{"providers": [{"name": "a", "issuer": "https://x", "client_id": "c"},
                                  {"name": "a", "issuer": "https://y", "client_id": "c"}]}"#;
    assert!(parse_config(twice, true, |_| unreachable!(), |_| None).is_err());
    let missing_env = r#"{"providers": [{"name": "a", "issuer": "https://x", "client_id": "c",
                                         "client_secret_env": "NOPE"}]}"#;
    assert!(parse_config(missing_env, true, |_| unreachable!(), |_| None).is_err());
}

#[test]
fn claims_map_to_a_login_or_a_refusal() {
    let s = settings();
    let ok = map_claims(
        &s,
        &claims(json!({"sub": "s-1", "preferred_username": "Alice", "groups": ["ocean-physics"]})),
    )
    .unwrap();
    assert_eq!(
        ok,
        MappedLogin {
            subject: "s-1".into(),
            username: "alice".into(),
            exact: true,
            groups: vec!["ocean-physics".into()],
            admin: false,
        }
    );
    let admin = map_claims(
        &s,
        &claims(json!({"sub": "s-2", "preferred_username": "root", "groups": ["vre-admins"]})),
    )
    .unwrap();
    assert!(admin.admin);
    // Not in allowed_groups: 403 "not authorised".
    let refused = map_claims(
        &s,
        &claims(json!({"sub": "s-3", "preferred_username": "eve", "groups": ["other"]})),
    )
    .unwrap_err();
    assert!(
        format!("{refused:?}").contains("not authorised"),
        "{refused:?}"
    );
    assert!(map_claims(&s, &claims(json!({"preferred_username": "x"}))).is_err());
    // A look-alike is mapped, but not exact: it cannot claim "admin".
    let lookalike = map_claims(
        &s,
        &claims(json!({"sub": "s-4", "preferred_username": "admin\u{200d}", "groups": ["ocean-physics"]})),
    )
    .unwrap();
    assert_eq!(
        (lookalike.username.as_str(), lookalike.exact),
        ("admin", false)
    );
    // Nothing usable (fullwidth letters only): a clear refusal.
    let fullwidth = map_claims(
        &s,
        &claims(
            json!({"sub": "s-5", "preferred_username": "ａｄｍｉｎ", "groups": ["ocean-physics"]}),
        ),
    )
    .unwrap_err();
    assert!(
        format!("{fullwidth:?}").contains("no usable user name"),
        "{fullwidth:?}"
    );
    assert!(
        map_claims(
            &s,
            &claims(json!({"sub": "s", "preferred_username": "@@", "groups": ["vre-admins"]}))
        )
        .is_err()
    );
}

// ---- ID token validation -----------------------------------------------------------------

/// A 2048-bit RSA key made for these tests only (also `tests/security.rs`'s).
const TEST_RSA_KEY: &str = include_str!("test_rsa_key.pem");

const ISSUER: &str = "https://idp.example.org/realms/vre";

fn signing_key(kid: &str) -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(TEST_RSA_KEY, Some(JsonWebKeyId::new(kid.into()))).unwrap()
}

fn jwks(kid: &str) -> JsonWebKeySet<CoreJsonWebKey> {
    JsonWebKeySet::new(vec![signing_key(kid).as_verification_key()])
}

struct TokenSpec<'a> {
    issuer: &'a str,
    audience: &'a str,
    expires_in: i64,
    nonce: &'a str,
    kid: &'a str,
}

const GOOD: TokenSpec<'static> = TokenSpec {
    issuer: ISSUER,
    audience: "atelier",
    expires_in: 300,
    nonce: "n-123",
    kid: "k1",
};

fn token(spec: &TokenSpec<'_>) -> HubIdToken {
    let now = Utc::now();
    let mut extra = ExtraClaims::default();
    extra
        .claims
        .insert("groups".into(), json!(["ocean-physics"]));
    let claims = HubIdTokenClaims::new(
        IssuerUrl::new(spec.issuer.into()).unwrap(),
        vec![Audience::new(spec.audience.into())],
        now + ChronoDuration::seconds(spec.expires_in),
        now - ChronoDuration::seconds(600),
        StandardClaims::new(SubjectIdentifier::new("alice-sub".into())),
        extra,
    )
    .set_nonce(Some(Nonce::new(spec.nonce.into())));
    let signed = HubIdToken::new(
        claims,
        &signing_key(spec.kid),
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        None,
        None,
    )
    .unwrap();
    // As the hub reads it: from the token response's text.
    signed.to_string().parse().unwrap()
}

fn verify(
    t: &HubIdToken,
    keys: JsonWebKeySet<CoreJsonWebKey>,
) -> Result<HubIdTokenClaims, ClaimsVerificationError> {
    let s = settings();
    let verifier = id_token_verifier(&s, keys);
    t.claims(&verifier, &Nonce::new("n-123".into())).cloned()
}

#[test]
fn a_valid_id_token_is_accepted_with_its_extra_claims() {
    let claims = verify(&token(&GOOD), jwks("k1")).unwrap();
    let map = claims_map(&claims).unwrap();
    assert_eq!(map["sub"], "alice-sub");
    assert_eq!(map["groups"], json!(["ocean-physics"]));
}

#[test]
fn an_expired_id_token_is_refused() {
    let expired = token(&TokenSpec {
        expires_in: -60,
        ..GOOD
    });
    assert!(matches!(
        verify(&expired, jwks("k1")),
        Err(ClaimsVerificationError::Expired(_))
    ));
}

#[test]
fn an_id_token_of_another_issuer_is_refused() {
    let other_issuer = token(&TokenSpec {
        issuer: "https://evil.example.org",
        ..GOOD
    });
    assert!(matches!(
        verify(&other_issuer, jwks("k1")),
        Err(ClaimsVerificationError::InvalidIssuer(_))
    ));
}

#[test]
fn an_id_token_for_another_audience_is_refused() {
    let other_audience = token(&TokenSpec {
        audience: "another-client",
        ..GOOD
    });
    assert!(matches!(
        verify(&other_audience, jwks("k1")),
        Err(ClaimsVerificationError::InvalidAudience(_))
    ));
}

#[test]
fn an_id_token_with_a_wrong_nonce_is_refused() {
    let wrong_nonce = token(&TokenSpec {
        nonce: "n-other",
        ..GOOD
    });
    assert!(matches!(
        verify(&wrong_nonce, jwks("k1")),
        Err(ClaimsVerificationError::InvalidNonce(_))
    ));
}

#[test]
fn an_id_token_of_an_unknown_key_or_tampered_is_refused() {
    // A key the JWKS does not hold (rotated keys): a signature failure, on which the hub fetches
    // the JWKS again once.
    let rotated = token(&TokenSpec { kid: "k2", ..GOOD });
    assert!(matches!(
        verify(&rotated, jwks("k1")),
        Err(ClaimsVerificationError::SignatureVerification(_))
    ));
    assert!(verify(&rotated, jwks("k2")).is_ok());
    // Tampered payload (another audience under the original signature): refused.
    let text = token(&GOOD).to_string();
    let parts: Vec<&str> = text.split('.').collect();
    let other = token(&TokenSpec {
        audience: "another-client",
        ..GOOD
    })
    .to_string();
    let forged: HubIdToken = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    )
    .parse()
    .unwrap();
    assert!(verify(&forged, jwks("k1")).is_err());
}
