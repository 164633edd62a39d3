//! Pure: what the observed pod says about the workspace (phase, Ready condition, message).
