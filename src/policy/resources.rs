//! Effective resources: a workspace's request over its profile's defaults over built-in defaults.

use crate::api::v1alpha1::ResourceRequest;

/// CPU of a workspace when neither it nor its profile says.
pub const DEFAULT_CPU: &str = "1";
/// Memory of a workspace when neither it nor its profile says.
pub const DEFAULT_MEMORY: &str = "2Gi";

/// Merges field by field: `request`, then `defaults` (the profile's `defaultResources`), then
/// [`DEFAULT_CPU`], [`DEFAULT_MEMORY`] and no GPU. The GPU type is dropped when the merged GPU
/// count is 0 (a profile default `gpuType` does not apply to a workspace that asks for no GPU).
pub fn effective_request(
    request: Option<&ResourceRequest>,
    defaults: Option<&ResourceRequest>,
) -> ResourceRequest {
    let pick = |f: fn(&ResourceRequest) -> Option<String>| {
        request.and_then(f).or_else(|| defaults.and_then(f))
    };
    let gpus = request
        .and_then(|r| r.gpus)
        .or_else(|| defaults.and_then(|d| d.gpus))
        .unwrap_or(0);
    ResourceRequest {
        cpu: Some(pick(|r| r.cpu.clone()).unwrap_or_else(|| DEFAULT_CPU.to_owned())),
        memory: Some(pick(|r| r.memory.clone()).unwrap_or_else(|| DEFAULT_MEMORY.to_owned())),
        gpus: Some(gpus),
        gpu_type: if gpus > 0 {
            pick(|r| r.gpu_type.clone())
        } else {
            None
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        cpu: Option<&str>,
        memory: Option<&str>,
        gpus: Option<i32>,
        t: Option<&str>,
    ) -> ResourceRequest {
        ResourceRequest {
            cpu: cpu.map(Into::into),
            memory: memory.map(Into::into),
            gpus,
            gpu_type: t.map(Into::into),
        }
    }

    #[test]
    fn merge_table() {
        let profile = req(Some("2"), Some("8Gi"), Some(1), Some("a100"));
        let cases = [
            (None, None, req(Some("1"), Some("2Gi"), Some(0), None)),
            (None, Some(&profile), profile.clone()),
            (
                Some(req(Some("500m"), None, None, None)),
                Some(&profile),
                req(Some("500m"), Some("8Gi"), Some(1), Some("a100")),
            ),
            (
                Some(req(None, Some("4Gi"), Some(0), None)),
                Some(&profile),
                req(Some("2"), Some("4Gi"), Some(0), None),
            ),
            (
                Some(req(None, None, Some(2), Some("v100"))),
                Some(&profile),
                req(Some("2"), Some("8Gi"), Some(2), Some("v100")),
            ),
            (
                Some(req(None, None, Some(1), None)),
                None,
                req(Some("1"), Some("2Gi"), Some(1), None),
            ),
        ];
        for (request, defaults, want) in cases {
            assert_eq!(
                effective_request(request.as_ref(), defaults),
                want,
                "{request:?}"
            );
        }
    }
}
