//! What a rule's outcome does: the actions a policy sets per rule, and the policy-wide mode.
use serde::{Deserialize, Serialize};

/// Action of a mutation rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MutateAction {
    /// Apply the patch.
    #[default]
    Mutate,
    /// Do not patch; record the patch it would have applied.
    Audit,
    /// Do nothing.
    Off,
}

/// Action of a validation rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidateAction {
    /// Deny with the rule's message.
    Enforce,
    /// Admit, and return the message as a warning (kubectl prints `Warning: ...`).
    Warn,
    /// Admit silently; record the finding (audit annotation, log, metric).
    Audit,
    /// Do nothing.
    Off,
}

impl ValidateAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            ValidateAction::Enforce => "enforce",
            ValidateAction::Warn => "warn",
            ValidateAction::Audit => "audit",
            ValidateAction::Off => "off",
        }
    }
}

impl MutateAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            MutateAction::Mutate => "mutate",
            MutateAction::Audit => "audit",
            MutateAction::Off => "off",
        }
    }
}

/// Policy-wide mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Rule actions take effect.
    #[default]
    Enforce,
    /// Dry-run audit: nothing is denied or patched, whatever the actions say; every would-be
    /// denial and patch is reported.
    Audit,
    /// The guard is switched off where this policy governs: nothing is evaluated, changed or
    /// reported (decisions made at creation are still kept on update, so updates keep working).
    /// The deliberate way to switch it off, beside deleting the webhook configurations.
    Off,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
            Mode::Off => "off",
        }
    }
}
