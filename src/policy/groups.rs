//! Group-based entitlements: who may use a profile, a pool or a data source.

use std::collections::BTreeSet;

/// Annotation carrying the owner's groups, comma-separated (written by the hub, or by an admin).
pub const GROUPS_ANNOTATION: &str = "atelier.dev/groups";

/// Parses the [`GROUPS_ANNOTATION`] value: comma-separated, trimmed, empty entries dropped.
pub fn parse_groups(annotation: Option<&str>) -> BTreeSet<String> {
    annotation
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether a user in `user_groups` may use something open to `allowed_groups`: an empty list
/// admits everyone, otherwise the user must be in at least one of the listed groups.
pub fn allowed(allowed_groups: &[String], user_groups: &BTreeSet<String>) -> bool {
    allowed_groups.is_empty() || allowed_groups.iter().any(|g| user_groups.contains(g))
}

/// Renders a list of groups for messages: `[a, b]`, sorted and without duplicates.
pub fn format_groups<'a>(groups: impl IntoIterator<Item = &'a String>) -> String {
    let sorted: BTreeSet<&str> = groups.into_iter().map(String::as_str).collect();
    let list: Vec<&str> = sorted.into_iter().collect();
    format!("[{}]", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(groups: &[&str]) -> BTreeSet<String> {
        groups.iter().map(|g| g.to_string()).collect()
    }

    fn list(groups: &[&str]) -> Vec<String> {
        groups.iter().map(|g| g.to_string()).collect()
    }

    #[test]
    fn allowed_table() {
        let cases: &[(&[&str], &[&str], bool)] = &[
            (&[], &[], true),
            (&[], &["physics"], true),
            (&["physics"], &[], false),
            (&["physics"], &["physics"], true),
            (&["physics"], &["chemistry"], false),
            (&["physics", "chemistry"], &["chemistry", "biology"], true),
            (&["Physics"], &["physics"], false),
            (
                &["vo.example.org:role=member"],
                &["vo.example.org:role=member"],
                true,
            ),
        ];
        for (allowed_groups, user_groups, want) in cases {
            assert_eq!(
                allowed(&list(allowed_groups), &set(user_groups)),
                *want,
                "{allowed_groups:?} vs {user_groups:?}"
            );
        }
    }

    #[test]
    fn formats_sorted_unique() {
        assert_eq!(format_groups(&list(&["b", "a", "b"])), "[a, b]");
        assert_eq!(format_groups(&set(&[])), "[]");
    }
}
