//! The macro behind the rule list in `rules/mod.rs`: from one line per rule it generates the
//! rule modules, [`super::RuleId`] (its names, its parsing) and [`super::Rules`] (the policy's
//! `rules:` schema, the action lookup, the checks, the engine's visits). Every `match` it
//! generates is exhaustive, so a rule cannot be half-wired.

macro_rules! registry {
    (
        mutations: [$($m:ident => $mmod:ident: $mname:literal),* $(,)?],
        validations: [$($v:ident => $vmod:ident: $vname:literal),* $(,)?] $(,)?
    ) => {
        $(pub mod $mmod;)*
        $(pub mod $vmod;)*

        /// Every rule's id: the name used in policy files, messages, metrics and annotations.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum RuleId {
            $($m,)*
            $($v,)*
        }

        impl RuleId {
            pub const ALL: &'static [RuleId] = &[$(RuleId::$m,)* $(RuleId::$v,)*];
            pub const MUTATIONS: &'static [RuleId] = &[$(RuleId::$m,)*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(RuleId::$m => $mname,)*
                    $(RuleId::$v => $vname,)*
                }
            }

            pub fn parse(s: &str) -> Option<RuleId> {
                match s {
                    $($mname => Some(RuleId::$m),)*
                    $($vname => Some(RuleId::$v),)*
                    _ => None,
                }
            }

            /// The rule module's source: its `//!` documentation is the rule's description (see
            /// [`RuleId::description`]), written once, where the rule is.
            const fn source(self) -> &'static str {
                match self {
                    $(RuleId::$m => include_str!(concat!(stringify!($mmod), ".rs")),)*
                    $(RuleId::$v => include_str!(concat!(stringify!($vmod), ".rs")),)*
                }
            }

            pub const fn is_mutation(self) -> bool {
                match self {
                    $(RuleId::$m => true,)*
                    $(RuleId::$v => false,)*
                }
            }
        }

        /// Every rule's configuration: a policy's `rules:` section, keyed by rule id. A rule
        /// left out gets its defaults.
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Rules {
            $(
                #[serde(rename = $mname)]
                pub $mmod: <$mmod::$m as MutationRule>::Config,
            )*
            $(
                #[serde(rename = $vname)]
                pub $vmod: <$vmod::$v as ValidationRule>::Config,
            )*
        }

        impl Rules {
            /// The action a rule takes under this configuration.
            pub fn action(&self, rule: RuleId) -> Action {
                match rule {
                    $(RuleId::$m => Action::Mutate(self.$mmod.action()),)*
                    $(RuleId::$v => Action::Validate(self.$vmod.action()),)*
                }
            }

            /// Checks every rule's parameters; the error names the field.
            pub fn check(&self) -> Result<(), String> {
                $(self.$mmod.check()
                    .map_err(|e| format!("spec.rules.{}.{e}", $mname))?;)*
                $(self.$vmod.check()
                    .map_err(|e| format!("spec.rules.{}.{e}", $vname))?;)*
                Ok(())
            }

            /// Each mutation rule, in the order they run.
            pub fn each_mutation<'r>(&'r self, visitor: &mut impl MutationVisitor<'r>) {
                $(visitor.visit::<$mmod::$m>(RuleId::$m, &self.$mmod);)*
            }

            /// Each validation rule.
            pub fn each_validation<'r>(&'r self, visitor: &mut impl ValidationVisitor<'r>) {
                $(visitor.visit::<$vmod::$v>(RuleId::$v, &self.$vmod);)*
            }
        }
    };
}
