//! Pure validation: a Workspace plus what `dereference` read → a [`ValidatedWorkspace`] or a [`Refusal`].

use super::{Dereferenced, Refusal, ValidatedWorkspace};
use crate::api::v1alpha1::Workspace;
use crate::operator::config::OperatorConfig;

/// Checks every rule (profile access, overrides, resources within the profile's maximum, pool
/// routing, data-source access, caps) and resolves defaults.
pub fn validate(
    _ws: &Workspace,
    _deref: &Dereferenced,
    _cfg: &OperatorConfig,
) -> Result<ValidatedWorkspace, Refusal> {
    unimplemented!("being written")
}
