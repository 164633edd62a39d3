//! Property-based fuzzing (proptest) of the pure parts: names and their escapes, scopes, the
//! proxy's paths, quantities, `user_options`, pagination parameters and the CRD types'
//! (de)serialisation. `tests/fuzz_api.rs` drives the hub's router the same way.
//!
//! Each property runs a fixed number of cases ([`config`]); nothing is written into the source
//! tree on a failure (`failure_persistence: None`): proptest prints the minimal failing input,
//! which then becomes a regression unit test next to the code it broke.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;

use atelier::api::patterns;
use atelier::api::v1alpha1::{BatchJob, DataSource, NodePool, Workspace, WorkspaceProfile};
use atelier::backend::SpawnRequest;
use atelier::backend::kubernetes::build_workspace;
use atelier::config::user_domain::{UserDomain, user_label};
use atelier::hub::api::{MAX_PAGE_LIMIT, PAGINATION_MEDIA_TYPE, Page};
use atelier::hub::catalog::{Catalog, CheckError, CredentialsFrom};
use atelier::policy::names;
use atelier::policy::quantity::{format_bytes, format_cpu_millis, parse_bytes, parse_cpu_millis};
use atelier::proxy::ServiceRoute;
use atelier::proxy::paths::{
    dashboard_server, encode_component, encode_segment, parse_user_path, percent_decode,
};
use atelier::scopes::{self, Filter, Holder, Role, Roles, Scope, ScopeSet};
use http::HeaderMap;
use kube::CustomResourceExt;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use regex::Regex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// `cases` cases, no failure files in the source tree, and the same cases at every run (CI must
/// not fail one run in a hundred): a fixed seed unless `PROPTEST_RNG_SEED` names another, which
/// is how to explore further (`PROPTEST_RNG_SEED=$RANDOM cargo test --test ...`).
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    let rng_seed = match std::env::var_os("PROPTEST_RNG_SEED") {
        Some(_) => default.rng_seed,
        None => proptest::test_runner::RngSeed::Fixed(0x00a7_e11e_2026),
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed,
        ..default
    }
}

// ---- strategies ------------------------------------------------------------------------------

/// Any string, biased towards the characters names, paths and escapes are made of.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9._~%/!=:@ -]{0,24}",
        1 => "[a-zA-Z0-9._~%/\\\\!=:@+ -]{0,70}",
        1 => any::<String>(),
        // Control characters (NUL among them), which `any::<String>()` never draws.
        1 => "[\\x00-\\x1F\\x7Fa-z]{0,8}",
        1 => "\\PC{0,12}",
    ]
}

/// A valid Atelier user name.
fn user_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]",
        "[a-z0-9][a-z0-9._-]{0,10}[a-z0-9]",
        "[a-z0-9][a-z0-9._-]{50,61}[a-z0-9]",
    ]
}

/// Valid user names over a tiny alphabet, so that distinct names that `-`, `.` or `_` joins
/// would confuse are drawn often.
fn confusable_user() -> impl Strategy<Value = String> {
    "[ab0]([ab0._-]{0,6}[ab0])?"
}

/// Valid server names over a tiny alphabet (empty: the default server).
fn confusable_server() -> impl Strategy<Value = String> {
    "([ab0]([ab0-]{0,6}[ab0])?)?"
}

/// A valid server name (empty: the default server).
fn server_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9]",
        "[a-z0-9][a-z0-9-]{0,20}[a-z0-9]",
        "[a-z0-9][a-z0-9-]{55,61}[a-z0-9]",
    ]
}

/// Any JSON value (depth 3), with object keys from `keys` or anything.
fn json_with_keys(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Integers of every magnitude (uniform ones are almost all huge).
        (0u32..63, any::<bool>()).prop_flat_map(|(bits, neg)| (0i64..=(1i64 << bits))
            .prop_map(move |n| Value::from(if neg { -n } else { n }))),
        (-3i64..1100).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        text().prop_map(Value::String),
        prop::sample::select(PLAUSIBLE).prop_map(|s| Value::String(s.to_owned())),
    ];
    let key = prop_oneof![
        3 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed();
    leaf.prop_recursive(3, 32, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings that mean something to some field.
const PLAUSIBLE: &[&str] = &[
    "",
    "2",
    "500m",
    "4Gi",
    "1e3",
    "0.5",
    "-1",
    "170141183460469231731687303715884105727n",
    "jupyter",
    "rstudio",
    "qgis",
    "r",
    "python",
    "pangeo",
    "gpu",
    "a100",
    "interactive",
    "batch",
    "argo-floats",
    "era5",
    "alice",
    "2026-01-02T03:04:05Z",
    "2026-01-02T03:04:05.123456Z",
    "not a time",
    "self",
    "read:users",
    "servers!user=alice",
    "access:servers!server=alice/gpu",
    "/tmp",
    "registry.example.org/img:1",
];

/// The keys of `user_options` and their nested objects.
const OPTION_KEYS: &[&str] = &[
    "profile",
    "kind",
    "image",
    "resources",
    "cpu",
    "memory",
    "gpus",
    "gpuType",
    "nodePool",
    "dataSources",
    "dask",
    "enabled",
    "workers",
    "min",
    "max",
    "workerResources",
    "idleTimeoutSeconds",
    "default_url",
];

// ---- 1. names --------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Every name derived for Kubernetes is an RFC 1123 label within its length limit, from any
    /// input, and none of them panics.
    #[test]
    fn derived_object_names_are_labels(ws in text(), ds in text(), ns in text()) {
        for name in [
            names::pod_name(&ws),
            names::service_name(&ws),
            names::network_policy_name(&ws),
            names::secret_name(&ws),
            names::home_claim_name(&ws),
            names::data_volume_name(&ds),
            names::data_claim_name(&ws, &ds),
            names::data_pv_name(&ns, &ws, &ds),
            names::user_namespace("atelier-u-", &ws),
            names::job_name(&ws, "x7k2q"),
            names::dns_label("", &ws, ""),
        ] {
            prop_assert!(names::is_dns_label(&name), "{name:?} from {ws:?}");
        }
        let dask = names::dask_cluster_name(&ws);
        prop_assert!(names::is_dns_label(&dask) && dask.len() <= names::DASK_CLUSTER_NAME_MAX,
            "{dask:?}");
        let label = names::label_value(&ws);
        prop_assert!(names::is_valid_label_value(&label), "{label:?}");
        let env = names::data_env_prefix(&ds);
        prop_assert!(Regex::new(patterns::ENV_NAME).unwrap().is_match(&env), "{env:?}");
    }

    /// A valid name is kept as it is where it is already a valid object name.
    #[test]
    fn plain_names_stay_plain(user in user_name(), server in server_name()) {
        if names::is_dns_label(&user) && user.len() < 60 {
            prop_assert_eq!(names::pod_name(&user), format!("ws-{user}"));
        }
        prop_assert_eq!(names::label_value(&user), user.clone());
        let label = names::server_label(&user, &server);
        prop_assert!(names::is_dns_label(&label), "{label:?}");
        let ns = names::user_namespace("atelier-u-", &user);
        prop_assert!(names::is_dns_label(&ns), "{ns:?}");
    }

    /// The validators agree with the schemas' patterns.
    #[test]
    fn validators_agree_with_the_patterns(s in text()) {
        let label = Regex::new(patterns::DNS_LABEL).unwrap();
        let subdomain = Regex::new(patterns::DNS_SUBDOMAIN).unwrap();
        let user = Regex::new(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$").unwrap();
        prop_assert_eq!(names::is_dns_label(&s), label.is_match(&s) && s.len() <= 63);
        prop_assert_eq!(names::is_dns_subdomain(&s), subdomain.is_match(&s) && s.len() <= 253
            && s.split('.').all(|l| l.len() <= 63));
        prop_assert_eq!(names::is_valid_user_name(&s), user.is_match(&s) && s.len() <= 63);
        prop_assert_eq!(names::is_valid_server_name(&s), s.is_empty() || names::is_dns_label(&s));
        if names::is_jupyterhub_server_name(&s) {
            prop_assert!(names::is_dns_label(&s) && s.len() <= 30 && !s.contains("--"));
        }
    }

    /// What the store keeps: ASCII lowercase without '/', whitespace or controls, at most 255
    /// bytes; normalising twice is normalising once; `check_name` accepts only normal names.
    #[test]
    fn normalised_names(s in text()) {
        if let Ok(n) = names::normalize_name("user", &s) {
            prop_assert!(n.len() <= names::MAX_NAME_LEN);
            prop_assert!(n.bytes().all(|b| b.is_ascii_graphic() && b != b'/'
                && !b.is_ascii_uppercase()), "{n:?}");
            prop_assert_eq!(names::normalize_name("user", &n), Ok(n.clone()));
            prop_assert_eq!(n, s.to_ascii_lowercase());
        }
        if names::check_name("user", &s).is_ok() {
            prop_assert!(names::normalize_name("user", &s).is_ok());
            prop_assert!(!s.is_empty() && s != "." && s != ".." && !s.contains('\\'));
        }
        if names::is_valid_user_name(&s) {
            prop_assert!(names::check_name("user", &s).is_ok());
        }
    }

    /// Every escape into a URL decodes back to its input, and keeps only what it promises.
    #[test]
    fn url_escapes_round_trip(s in text()) {
        for escaped in [
            names::escape_segment(&s),
            atelier::hub::page::url_encode(&s),
            encode_segment(&s),
            encode_component(&s),
        ] {
            prop_assert_eq!(percent_decode(&escaped).into_owned(), s.clone(), "{}", escaped);
            prop_assert!(!escaped.contains(['/', '?', '#', ' ']), "{escaped:?}");
        }
        prop_assert!(names::escape_segment(&s).bytes().all(|b| b.is_ascii_alphanumeric()
            || b"-._~%".contains(&b)));
        prop_assert_eq!(names::escape_segment(&s), atelier::hub::page::url_encode(&s));
        prop_assert_eq!(percent_decode(&s).len() <= s.len(), true);
    }

    /// A server's URL (the hub's and the policy's, which must agree) parses back to its user and
    /// server, whatever the names.
    #[test]
    fn server_urls_parse_back(user in text(), server in text()) {
        prop_assume!(!user.is_empty());
        let url = names::server_url(&user, &server);
        prop_assert_eq!(&url, &atelier::hub::page::server_url(&user, &server));
        let parsed = parse_user_path(&url).expect("a server's URL is a user path");
        prop_assert_eq!(parsed.user.as_ref(), user.as_str());
        prop_assert_eq!(parsed.segment.as_deref(), (!server.is_empty()).then_some(server.as_str()));
        let callback = names::oauth_callback_url("https://vre.example.org/", &user, &server);
        prop_assert_eq!(callback, format!("https://vre.example.org{url}oauth_callback"));
    }

    /// Distinct (user, server) pairs never share a derived name (the names claim injectivity),
    /// over a tiny alphabet where `-`, `.` and `_` joins would collide.
    #[test]
    fn pair_names_are_injective(
        a in (confusable_user(), confusable_server()),
        b in (confusable_user(), confusable_server()),
    ) {
        prop_assume!(a != b);
        prop_assert_ne!(names::server_label(&a.0, &a.1), names::server_label(&b.0, &b.1));
        if !a.1.contains('~') && !b.1.contains('~') && !a.0.contains('~') && !b.0.contains('~') {
            prop_assert_ne!(names::oauth_client_id(&a.0, &a.1), names::oauth_client_id(&b.0, &b.1));
        }
        prop_assert_ne!(names::data_claim_name(&a.0, &a.1), names::data_claim_name(&b.0, &b.1));
        if a.0 != b.0 {
            if let (Ok(x), Ok(y)) = (user_label(&a.0), user_label(&b.0)) {
                prop_assert_ne!(x, y);
            }
            prop_assert_ne!(names::user_namespace("u-", &a.0), names::user_namespace("u-", &b.0));
            prop_assert_ne!(names::pod_name(&a.0), names::pod_name(&b.0));
            prop_assert_ne!(names::home_claim_name(&a.0), names::home_claim_name(&b.0));
            prop_assert_ne!(names::dask_cluster_name(&a.0), names::dask_cluster_name(&b.0));
        }
    }

    /// A valid user's host label is a label, and classifying its host gives the label back.
    #[test]
    fn user_hosts_classify_back(user in user_name(), port in prop::option::of(1u16..)) {
        let domain = UserDomain::parse("users.example.org").unwrap();
        if let Ok(label) = user_label(&user) {
            prop_assert!(names::is_dns_label(&label), "{label:?}");
            let host = domain.host(&user).unwrap();
            let with_port = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            prop_assert_eq!(domain.classify(&with_port),
                atelier::config::user_domain::HostKind::User(label));
        } else {
            prop_assert!(user.len() > 20, "a name of up to 20 characters always fits: {user:?}");
        }
    }

    /// Hosts of any shape are classified without panicking; user domains of any shape parse or
    /// are refused.
    #[test]
    fn hosts_and_domains_never_panic(host in text(), domain in text()) {
        let d = UserDomain::parse("users.example.org").unwrap();
        let _ = d.classify(&host);
        let _ = d.covers_url(&host);
        let _ = d.origin(&host, "alice");
        if let Ok(parsed) = UserDomain::parse(&domain) {
            prop_assert!(names::is_dns_subdomain(&parsed.to_string()), "{parsed}");
        }
    }
}

// ---- 2. scopes -------------------------------------------------------------------------------

/// A scope string: a known name (or not), maybe a filter of any kind and value.
fn scope_text() -> impl Strategy<Value = String> {
    let known: Vec<&'static str> = scopes::names().collect();
    let name = prop_oneof![
        4 => prop::sample::select(known).prop_map(str::to_owned),
        1 => text(),
    ];
    let filter = prop_oneof![
        2 => Just(String::new()),
        1 => "!(user|server|group|service)",
        3 => ("(user|server|group|service|host)", text()).prop_map(|(k, v)| format!("!{k}={v}")),
        1 => ("[a-z]{1,4}", user_name(), server_name())
            .prop_map(|(k, u, s)| format!("!{k}={u}/{s}")),
        1 => (user_name(), server_name()).prop_map(|(u, s)| format!("!server={u}/{s}")),
        1 => text().prop_map(|t| format!("!{t}")),
    ];
    (name, filter).prop_map(|(n, f)| format!("{n}{f}"))
}

/// A parsed scope of any filter.
fn scope() -> impl Strategy<Value = Scope> {
    let known: Vec<&'static str> = scopes::names().collect();
    let value = "[a-z0-9._!=@:+/ -]{1,10}";
    let filter = prop_oneof![
        Just(Filter::All),
        value.prop_map(Filter::User),
        value.prop_map(Filter::Group),
        value.prop_map(Filter::Service),
        ("[a-z0-9._!=@:+ -]{1,10}", "[a-z0-9._!=@:+/ -]{0,10}")
            .prop_map(|(u, s)| Filter::Server(u, s)),
        (
            prop::sample::select(vec!["alice", "bob"]),
            prop::sample::select(vec!["", "gpu"])
        )
            .prop_map(|(u, s)| Filter::Server(u.into(), s.into())),
        prop::sample::select(vec!["alice", "bob"]).prop_map(|u| Filter::User(u.into())),
    ];
    (prop::sample::select(known), filter).prop_map(|(name, filter)| Scope {
        name: name.to_owned(),
        filter,
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// Parsing never panics, and whatever parses prints back to a string that parses to it.
    #[test]
    fn scopes_parse_and_print_back(s in scope_text()) {
        if let Ok(scope) = Scope::parse(&s) {
            prop_assert_eq!(Scope::parse(&scope.to_string()), Ok(scope.clone()));
            prop_assert!(scopes::is_known(&scope.name));
        }
        let _ = scopes::is_extension(&s);
        let _ = scopes::resolve_bare(&[s.as_str()], Holder::User("alice"));
        let _ = scopes::resolve_raw(&[s.as_str()], Holder::Service("svc"));
    }

    /// Every scope value prints to a string that parses back to it (filters round trip).
    #[test]
    fn scopes_print_and_parse_back(scope in scope()) {
        prop_assert_eq!(Scope::parse(&scope.to_string()), Ok(scope.clone()));
    }

    /// Expansion: each name implies itself, expansions are closed (expanding an expansion adds
    /// nothing), and implication is transitive.
    #[test]
    fn expansion_is_closed(a in prop::sample::select(scopes::names().collect::<Vec<_>>()),
                           b in prop::sample::select(scopes::names().collect::<Vec<_>>())) {
        let ea = scopes::expansion(a);
        prop_assert!(ea.contains(a));
        let again: BTreeSet<&str> = ea.iter().flat_map(|n| scopes::expansion(n)).collect();
        prop_assert_eq!(&again, &ea);
        if scopes::implies(a, b) {
            prop_assert!(scopes::expansion(b).is_subset(&ea));
        }
    }

    /// `ScopeSet::expanded` is idempotent and grants exactly what the set grants: each expanded
    /// scope is covered by the set, and each scope of the set by the expansion.
    #[test]
    fn expanded_sets_are_equivalent_and_idempotent(
        set in prop::collection::vec(scope(), 0..5),
        owner in prop::option::of(user_name()),
    ) {
        let raw: Vec<String> = set.iter().map(Scope::to_string).collect();
        let parsed = ScopeSet::parse(&raw, owner.as_deref()).expect("printed scopes parse");
        let expanded = parsed.expanded();
        let reparsed = ScopeSet::parse(expanded, owner.as_deref()).expect("expanded scopes parse");
        prop_assert_eq!(reparsed.expanded(), expanded, "not idempotent");
        for s in reparsed.iter() {
            prop_assert!(parsed.covers(s), "{} granted by the expansion only", s);
        }
        for s in parsed.iter() {
            let cross = matches!(s.filter, Filter::Server(..));
            if !cross {
                prop_assert!(reparsed.covers(s), "{} lost by the expansion", s);
            }
        }
        // Intersections keep only what both hold.
        let other = ScopeSet::for_user("alice", false);
        let both = parsed.intersect(&other);
        for s in both.iter() {
            prop_assert!(parsed.covers(s) && other.covers(s));
        }
    }

    /// Roles of any shape are accepted or refused, never a panic; accepted ones give scopes.
    #[test]
    fn roles_never_panic(
        name in prop_oneof![Just("user".to_owned()), Just("admin".to_owned()),
                            Just("server".to_owned()), text()],
        raw in prop::collection::vec(scope_text(), 0..4),
        user in user_name(),
    ) {
        let role = Role {
            name,
            scopes: raw,
            users: vec![user.clone()],
            groups: vec!["g".into()],
            ..Role::default()
        };
        if let Ok(roles) = Roles::new(vec![role]) {
            let groups = BTreeSet::from(["g".to_owned()]);
            let _ = roles.user_scopes(&user, false, &groups);
            let token = roles.server_token_scopes(&user, false, &groups, "gpu");
            for s in &token {
                prop_assert!(Scope::parse(s).is_ok(), "{s}");
            }
            let _ = roles.service_scopes("svc");
        }
    }
}

// ---- 6. the proxy's paths --------------------------------------------------------------------

/// Path tails made of the pieces that trip path parsers.
fn path_tail() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/",
        "//",
        "..",
        ".",
        "%2e",
        "%2E",
        "%2e%2e",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "%00",
        "%",
        "%%",
        "%zz",
        "bob",
        "alice",
        "dask",
        "gpu",
        "?",
        "#",
        "user",
        "/user/",
        "/user/bob/",
        ";",
        "~",
    ]);
    prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary paths never panic the parsers.
    #[test]
    fn paths_never_panic(p in prop_oneof![text(), path_tail().prop_map(|t| format!("/user/{t}"))]) {
        let _ = parse_user_path(&p);
        let _ = dashboard_server(&p);
        let _ = percent_decode(&p);
        let _ = ServiceRoute::parse(&p);
        if let Ok(route) = ServiceRoute::parse(&format!("svc@{p}")) {
            prop_assert!(route.matches("/services/svc/x"));
        }
    }

    /// Security: the user a path names is the one of its first segment after `/user/`,
    /// decoded, whatever follows (`..`, `%2e%2e`, `//`, encoded slashes, another user's prefix):
    /// so a path under a user's prefix never names another user, and a path naming user U
    /// starts with U's prefix once its first segment is decoded and escaped again.
    #[test]
    fn a_users_prefix_names_only_that_user(user in user_name(), server in server_name(),
                                             tail in path_tail()) {
        let prefix = names::server_url(&user, &server);
        let p = format!("{prefix}{tail}");
        let parsed = parse_user_path(&p).expect("under a user's prefix");
        prop_assert_eq!(parsed.user.as_ref(), user.as_str());
        if !server.is_empty() {
            prop_assert_eq!(parsed.segment.as_deref(), Some(server.as_str()));
        }
        if let Some(dashboard) = dashboard_server(&p) {
            // The dashboard named is this user's default server's or the parsed segment's.
            prop_assert!(dashboard.is_empty() || parsed.segment.as_deref() == Some(&*dashboard));
        }
    }

    /// Conversely, any path that names a user starts with that user's (decoded) prefix.
    #[test]
    fn a_named_user_is_the_first_segment(tail in path_tail(), head in text()) {
        let p = format!("/user/{head}{tail}");
        if let Some(parsed) = parse_user_path(&p) {
            let first = p["/user/".len()..].split('/').next().unwrap();
            let decoded = percent_decode(first);
            prop_assert_eq!(parsed.user.as_ref(), decoded.as_ref());
            prop_assert!(!first.is_empty());
            let canonical = names::server_url(&parsed.user, "");
            let rest = &p["/user/".len() + first.len()..];
            prop_assert!(rest.is_empty() || rest.starts_with('/'));
            if names::is_valid_user_name(&parsed.user) {
                // Re-rendering gives the prefix the path has once normalised.
                prop_assert_eq!(format!("/user/{}/", names::escape_segment(&percent_decode(first))),
                    canonical);
            }
        }
    }
}

// ---- quantities ------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Quantities of any shape parse or are refused, never a panic; amounts are never negative.
    #[test]
    fn quantities_never_panic(
        s in prop_oneof![
            text(),
            "[+-]?[0-9]{0,45}(\\.[0-9]{0,45})?([numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]{1,12})?",
            // Long mantissas after leading zeros: the largest exact values there are.
            (
                prop_oneof!["[1-9][0-9]{30,40}", "1[0-6][0-9]{36,38}"],
                0usize..4,
                "0{0,4}",
                prop_oneof![3 => Just(String::new()), 1 => "[numkMGTPE]|[KMGTPE]i|[eE]-?[0-9]{1,2}"],
            )
                .prop_map(|(digits, point, zeros, suffix)| match point {
                    0 => format!("0.{zeros}{digits}{suffix}"),
                    _ => format!("{}.{}{suffix}", &digits[..point], &digits[point..]),
                }),
        ]
    ) {
        for n in [parse_cpu_millis(&s), parse_bytes(&s)].into_iter().flatten() {
            prop_assert!(n >= 0, "{s:?} → {n}");
        }
    }

    /// Formatting then parsing is the identity.
    #[test]
    fn quantities_format_and_parse_back(n in 0i64.., m in 0i64..1_000_000_000_000) {
        prop_assert_eq!(parse_bytes(&format_bytes(n)), Ok(n));
        prop_assert_eq!(parse_cpu_millis(&format_cpu_millis(m)), Ok(m));
    }
}

// ---- 3. user_options -------------------------------------------------------------------------

fn catalog() -> Catalog {
    Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/examples"))
        .expect("crds/examples load")
}

fn start_request(user: &str, options: Value) -> SpawnRequest {
    SpawnRequest {
        user: user.to_owned(),
        server: "gpu".to_owned(),
        groups: vec!["ocean".to_owned()],
        profile: None,
        user_options: options,
        env: Default::default(),
        files: Default::default(),
        dask: None,
        kind: Default::default(),
    }
}

/// A field a 400 may name: `user_options…` or the request's own names.
fn names_a_field(field: &str) -> bool {
    field.starts_with("user_options")
        || ["profile", "default profile", "user name", "server name"].contains(&field)
}

proptest! {
    #![proptest_config(config(192))]

    /// Arbitrary `user_options` become a Workspace whose spec survives the CRD's round trip,
    /// or a 400 naming the field; the catalogue's check (as the hub runs it) likewise, or a
    /// refusal naming its rule.
    #[test]
    fn user_options_give_a_workspace_or_name_the_field(
        options in prop_oneof![
            3 => prop::collection::btree_map(
                prop::sample::select(OPTION_KEYS).prop_map(str::to_owned),
                json_with_keys(OPTION_KEYS),
                0..5,
            ).prop_map(|m| Value::Object(m.into_iter().collect())),
            1 => json_with_keys(OPTION_KEYS),
        ],
        user in prop_oneof![user_name(), text()],
    ) {
        let request = start_request(&user, options.clone());
        match build_workspace(&request, "w", "ns", "python") {
            Ok(ws) => {
                crd_value_round_trip(&ws)?;
                round_trip(&ws.spec)?;
            }
            Err(e) => {
                prop_assert!(names_a_field(&e.field), "{e} names no field ({options})");
                prop_assert!(!e.message.is_empty());
            }
        }
        let catalog = catalog();
        match catalog.check(&request, "python", CredentialsFrom::Cluster) {
            Ok(profile) => prop_assert!(profile.is_some()),
            Err(CheckError::Invalid(e)) => {
                prop_assert!(names_a_field(&e.field), "{e} names no field ({options})");
            }
            Err(CheckError::Refused(r)) => {
                prop_assert!(!r.reason.is_empty() && !r.message.is_empty(), "{r:?}");
            }
        }
        let _ = catalog.local_data(&request, "python", 1000, 0);
        let _ = catalog.local_dask(&request, "python");
    }
}

// ---- 4. pagination ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// `offset` and `limit` of any shape: a 400 or a page whose limit is within
    /// 1..=MAX_PAGE_LIMIT, as JupyterHub clamps it.
    #[test]
    fn pages_clamp_their_limits(
        pairs in prop::collection::vec(
            (prop::sample::select(vec!["offset", "limit", "x", "include_stopped_servers"]),
             prop_oneof![
                 any::<i64>().prop_map(|n| n.to_string()),
                 any::<u64>().prop_map(|n| n.to_string()),
                 (-5i64..300).prop_map(|n| format!(" {n} ")),
                 text(),
             ]),
            0..4,
        ),
        paginated in any::<bool>(),
    ) {
        let query: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let mut headers = HeaderMap::new();
        if paginated {
            headers.insert(http::header::ACCEPT, PAGINATION_MEDIA_TYPE.parse().unwrap());
        }
        let last = |key: &str| query.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.trim());
        match Page::from_request(&query, &headers) {
            Ok(page) => {
                prop_assert!((1..=MAX_PAGE_LIMIT).contains(&page.limit));
                prop_assert_eq!(page.paginated, paginated);
                if let Some(n) = last("limit").and_then(|v| v.parse::<i64>().ok()) {
                    let want = n.unsigned_abs().clamp(1, u64::from(MAX_PAGE_LIMIT));
                    prop_assert_eq!(u64::from(page.limit), want);
                }
                if let Some(n) = last("offset").and_then(|v| v.parse::<i64>().ok()) {
                    prop_assert_eq!(page.offset, n.unsigned_abs());
                }
            }
            Err(e) => {
                let bad = |key| last(key).is_some_and(|v| v.parse::<i64>().is_err());
                prop_assert!(bad("limit") || bad("offset"), "{e:?}");
            }
        }
    }
}

// ---- 7. the CRDs -----------------------------------------------------------------------------

/// `value` → JSON → the type → JSON: the same value and the same JSON again.
fn round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let json = serde_json::to_value(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = serde_json::from_value(json.clone())
        .map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
    prop_assert_eq!(&back, value);
    prop_assert_eq!(serde_json::to_value(&back).unwrap(), json);
    Ok(())
}

/// A custom resource, compared by its parts (kube's derive gives the root type no `PartialEq`).
trait Crd: Serialize + DeserializeOwned + Debug {
    type Parts: PartialEq + Debug;
    fn parts(&self) -> Self::Parts;
}

macro_rules! crd_parts {
    ($($kind:ty => |$o:ident| $parts:expr, $t:ty;)*) => {$(
        impl Crd for $kind {
            type Parts = $t;
            fn parts(&self) -> $t {
                let $o = self;
                $parts
            }
        }
    )*};
}

type Meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

crd_parts! {
    Workspace => |o| (o.metadata.clone(), o.spec.clone(), o.status.clone()),
        (Meta, atelier::api::v1alpha1::WorkspaceSpec, Option<atelier::api::v1alpha1::WorkspaceStatus>);
    BatchJob => |o| (o.metadata.clone(), o.spec.clone(), o.status.clone()),
        (Meta, atelier::api::v1alpha1::BatchJobSpec, Option<atelier::api::v1alpha1::BatchJobStatus>);
    WorkspaceProfile => |o| (o.metadata.clone(), o.spec.clone()),
        (Meta, atelier::api::v1alpha1::WorkspaceProfileSpec);
    NodePool => |o| (o.metadata.clone(), o.spec.clone()), (Meta, atelier::api::v1alpha1::NodePoolSpec);
    DataSource => |o| (o.metadata.clone(), o.spec.clone()), (Meta, atelier::api::v1alpha1::DataSourceSpec);
}

/// A resource → JSON → the type → JSON: the same parts and the same JSON again.
fn crd_value_round_trip<K: Crd>(value: &K) -> Result<(), TestCaseError> {
    let json = serde_json::to_value(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: K = serde_json::from_value(json.clone())
        .map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
    prop_assert_eq!(back.parts(), value.parts());
    prop_assert_eq!(serde_json::to_value(&back).unwrap(), json);
    Ok(())
}

/// Values of the OpenAPI schema `schema` (structural schemas as `crdgen` writes them): objects
/// with their required properties and some optional ones, arrays, maps, enums, strings (date-times
/// where the format says so), integers within their bounds and format, booleans, nulls where
/// nullable. Validation rules (patterns, CEL) are not followed: serde does not check them.
fn from_schema(schema: &Value, depth: u32) -> BoxedStrategy<Value> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return prop::sample::select(values.clone()).boxed();
    }
    let base = match schema.get("type").and_then(Value::as_str) {
        Some("object") => match (
            schema.get("properties").and_then(Value::as_object),
            schema.get("additionalProperties"),
        ) {
            (Some(props), _) => {
                let required: BTreeSet<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = props
                    .iter()
                    .map(|(key, sub)| {
                        let key = key.clone();
                        let value = from_schema(sub, depth + 1);
                        if required.contains(key.as_str()) {
                            value.prop_map(move |v| Some((key.clone(), v))).boxed()
                        } else if depth > 6 {
                            Just(None).boxed()
                        } else {
                            prop::option::weighted(0.5, value)
                                .prop_map(move |v| v.map(|v| (key.clone(), v)))
                                .boxed()
                        }
                    })
                    .collect();
                fields
                    .prop_map(|fields| Value::Object(fields.into_iter().flatten().collect()))
                    .boxed()
            }
            (None, Some(items)) if items.is_object() => prop::collection::btree_map(
                "[A-Za-z_][A-Za-z0-9_./-]{0,8}",
                from_schema(items, depth + 1),
                0..3,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
            .boxed(),
            _ => Just(json!({})).boxed(),
        },
        Some("array") => {
            let items = schema.get("items").cloned().unwrap_or(json!({}));
            let max = if depth > 6 { 1 } else { 3 };
            prop::collection::vec(from_schema(&items, depth + 1), 0..max)
                .prop_map(Value::Array)
                .boxed()
        }
        Some("string") => match schema.get("format").and_then(Value::as_str) {
            Some("date-time") => (
                1971i32..2100,
                1u32..13,
                1u32..29,
                0u32..24,
                0u32..60,
                0u32..60,
            )
                .prop_map(|(y, mo, d, h, mi, s)| {
                    Value::String(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"))
                })
                .boxed(),
            _ => prop_oneof![
                3 => "[a-z0-9][a-z0-9.-]{0,10}",
                1 => text(),
                1 => prop::sample::select(PLAUSIBLE).prop_map(str::to_owned),
            ]
            .prop_map(Value::String)
            .boxed(),
        },
        Some("integer") => {
            let (lo, hi) = match schema.get("format").and_then(Value::as_str) {
                Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
                Some("uint32") => (0, i64::from(u32::MAX)),
                Some("uint64") | Some("uint") => (0, i64::MAX),
                _ => (i64::MIN, i64::MAX),
            };
            let lo = schema
                .get("minimum")
                .and_then(Value::as_i64)
                .unwrap_or(lo)
                .max(lo);
            let hi = schema
                .get("maximum")
                .and_then(Value::as_i64)
                .unwrap_or(hi)
                .min(hi);
            prop_oneof![
                (lo..=hi).prop_map(Value::from),
                prop::sample::select(vec![lo, hi, lo.max(0).min(hi)]).prop_map(Value::from),
            ]
            .boxed()
        }
        Some("boolean") => any::<bool>().prop_map(Value::Bool).boxed(),
        Some("number") => (-1e6f64..1e6).prop_map(|f| json!(f)).boxed(),
        _ => json_with_keys(&["name", "value"]).boxed(),
    };
    if schema.get("nullable") == Some(&Value::Bool(true)) {
        prop_oneof![1 => Just(Value::Null), 4 => base].boxed()
    } else {
        base
    }
}

/// Objects of kind `K` generated from its own CRD's schema (spec and status), so that a new
/// field is fuzzed without a change here.
fn objects_of<K: CustomResourceExt>() -> BoxedStrategy<Value> {
    let crd = serde_json::to_value(K::crd()).unwrap();
    let version = &crd["spec"]["versions"][0];
    let schema = &version["schema"]["openAPIV3Schema"];
    let api_version = format!(
        "{}/{}",
        crd["spec"]["group"].as_str().unwrap(),
        version["name"].as_str().unwrap()
    );
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
    let spec = from_schema(&schema["properties"]["spec"], 0);
    let status = match schema["properties"].get("status") {
        Some(s) => prop::option::of(from_schema(s, 0)).boxed(),
        None => Just(None).boxed(),
    };
    let namespaced = crd["spec"]["scope"] == "Namespaced";
    (spec, status, "[a-z0-9][a-z0-9-]{0,20}")
        .prop_map(move |(spec, status, name)| {
            let mut metadata = json!({"name": name, "generation": 3});
            if namespaced {
                metadata["namespace"] = json!("atelier");
            }
            let mut obj = json!({
                "apiVersion": api_version,
                "kind": kind,
                "metadata": metadata,
                "spec": spec,
            });
            if let Some(status) = status {
                obj["status"] = status;
            }
            obj
        })
        .boxed()
}

/// A generated object deserialises (the schema and the Rust type agree) and round trips.
fn crd_round_trip<K: Crd>(obj: &Value) -> Result<(), TestCaseError> {
    let typed: K = serde_json::from_value(obj.clone()).map_err(|e| {
        TestCaseError::fail(format!("the schema allows what serde refuses: {e}\n{obj}"))
    })?;
    crd_value_round_trip(&typed)
}

/// Arbitrary JSON with the CRDs' own property names as keys, in an object of the right kind.
fn arbitrary_object(kind: &'static str) -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "spec",
        "status",
        "metadata",
        "name",
        "user",
        "serverName",
        "profile",
        "kind",
        "image",
        "resources",
        "cpu",
        "memory",
        "gpus",
        "gpuType",
        "nodePool",
        "dataSources",
        "env",
        "dask",
        "workers",
        "min",
        "max",
        "caps",
        "groups",
        "s3",
        "nfs",
        "pvc",
        "irods",
        "csi",
        "ogc",
        "wms",
        "conditions",
        "phase",
        "type",
        "lastTransitionTime",
        "command",
        "slurm",
        "kueue",
        "desktop",
        "home",
        "purpose",
        "selector",
        "tolerations",
        "affinity",
    ];
    json_with_keys(KEYS).prop_map(move |v| {
        let mut obj = json!({"apiVersion": "atelier.dev/v1alpha1", "kind": kind,
                             "metadata": {"name": "x"}});
        obj["spec"] = v.get("spec").cloned().unwrap_or(v.clone());
        if let Some(status) = v.get("status") {
            obj["status"] = status.clone();
        }
        obj
    })
}

macro_rules! crd_properties {
    ($($kind:ident => $generated:ident, $arbitrary:ident;)*) => {
        proptest! {
            #![proptest_config(config(96))]
            $(
                #[test]
                fn $generated(obj in objects_of::<$kind>()) {
                    crd_round_trip::<$kind>(&obj)?;
                }

                #[test]
                fn $arbitrary(obj in arbitrary_object(stringify!($kind))) {
                    if let Ok(typed) = serde_json::from_value::<$kind>(obj) {
                        crd_value_round_trip(&typed)?;
                    }
                }
            )*
        }
    };
}

crd_properties! {
    Workspace => workspaces_round_trip, arbitrary_json_is_a_workspace_or_an_error;
    WorkspaceProfile => profiles_round_trip, arbitrary_json_is_a_profile_or_an_error;
    NodePool => node_pools_round_trip, arbitrary_json_is_a_node_pool_or_an_error;
    DataSource => data_sources_round_trip, arbitrary_json_is_a_data_source_or_an_error;
    BatchJob => batch_jobs_round_trip, arbitrary_json_is_a_batch_job_or_an_error;
}

/// Every CRD `crdgen` writes has its round trip above: a new kind fails here until it has.
#[test]
fn every_crd_is_fuzzed() {
    let kinds: BTreeSet<String> = atelier::api::v1alpha1::crds()
        .into_iter()
        .map(|crd| crd.spec.names.kind)
        .collect();
    let fuzzed: BTreeSet<String> = [
        "Workspace",
        "WorkspaceProfile",
        "NodePool",
        "DataSource",
        "BatchJob",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(kinds, fuzzed, "add the new kind to crd_properties!");
}

/// The examples of `crds/examples` round trip too (hand-written values, every field).
#[test]
fn examples_round_trip() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let check = match doc["kind"].as_str() {
                Some("Workspace") => crd_round_trip::<Workspace>(&doc),
                Some("WorkspaceProfile") => crd_round_trip::<WorkspaceProfile>(&doc),
                Some("NodePool") => crd_round_trip::<NodePool>(&doc),
                Some("DataSource") => crd_round_trip::<DataSource>(&doc),
                Some("BatchJob") => crd_round_trip::<BatchJob>(&doc),
                _ => continue,
            };
            check.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 5, "only {seen} examples");
}
