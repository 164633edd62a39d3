//! The Kubernetes client, as the operator and the hub's kubernetes backend build it.

use anyhow::Context as _;
use http::{HeaderValue, header};
use kube::Client;

/// A client from the environment (in-cluster or kubeconfig) sending `User-Agent: <user_agent>`
/// (the operator's: `crate::operator::OPERATOR_USER_AGENT`; the hub's kubernetes backend has its own).
pub async fn kube_client(user_agent: &'static str) -> anyhow::Result<Client> {
    let mut config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    config
        .headers
        .push((header::USER_AGENT, HeaderValue::from_static(user_agent)));
    Ok(Client::try_from(config)?)
}
